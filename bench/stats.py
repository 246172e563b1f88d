"""Paired statistics for the gap between a method and its baseline on shared test points (torch-free).

`paired_gap` is the one statistic behind every gap `bench report` prints. Its unit is the *test point*, not the
(run, point) pair: the seeds of a study reuse the same test points, and a point that favours one model tends
to favour it in every seed, so counting each seed's discordant pairs as independent coin flips (a McNemar test
on stacked runs) rejects a true null far too often (the simulation in tests/test_stats.py shows it).

- gap: mean over runs and points of method - baseline, in accuracy points.
- p: exact two-sided sign-flip permutation test on the per-point, run-averaged differences d_i (Fisher 1935;
  Good, *Permutation Tests*, 2000). Under H0 the two sides are exchangeable at each point, so every d_i is
  equally likely to have either sign; the p-value is P(|sum s_i d_i| >= |sum d_i|) over all 2^n sign
  vectors s, computed exactly (see `_sign_flip_p`). With one run and binary flags this is the exact McNemar
  test (d_i in {-1, 0, 1}: the discordant points, each a fair coin under H0).
- low, high: percentile bootstrap interval of the gap, resampling test points with their runs attached. It
  covers the uncertainty from *which test points* were drawn, for these trained models averaged over the
  runs present; it does not cover how a new training seed would move the gap. That spread is `seed_sd`, the
  standard deviation of the per-run gaps, reported beside the interval.

`seed_gap` compares the *methods*, treating each trained model as one random draw from its method's training
seeds. `paired_gap` cannot: its sign-flip null is that the two sides are exchangeable at every test point for
these trained models, so when two methods have the same expected accuracy but each seed's model lands a few
points above or below it, the models still differ and paired_gap correctly finds that (and so rejects the null
about the methods in about a third of simulations with +-5-point seed shifts; tests/test_seed_gap.py). seed_gap
takes the per-point differences D[s, i] = method - baseline (S seeds x N points) as a crossed two-way
random-effects layout without replication, D = mu + a_s + b_i + e_si (Cornfield & Tukey 1956; Searle, Casella &
McCulloch, *Variance Components*, 1992; the G-study variance of generalizability theory), whose mean has
variance sigma_a^2 / S + sigma_b^2 / N + sigma_e^2 / (S N): seed-to-seed and test-point variation both count.
With the ANOVA mean squares MS_seed = N var(row means), MS_point = S var(column means) and the residual MS_err on
(S-1)(N-1) df, that is (MS_seed + MS_point - MS_err) / (S N) when both component estimates are >= 0. A
component estimate below zero (possible: it is a difference of mean squares) is set to zero, so the variance
used is (max(MS_seed, MS_err) + max(MS_point, MS_err) - MS_err) / (S N): never below the plain ANOVA value, nor
below var(per-seed gaps) / S (seeds as the unit), and positive unless every difference is the same. The gap is
the mean of the per-seed gaps; p is two-sided and the interval gap +- t se, both on a t reference with S - 1 df,
not a Satterthwaite df: close to exact when seed shifts dominate, conservative when the test points carry the variance
(their components are estimated on far more df), very conservative at 3 seeds. With one seed (or one test
point) a component cannot be estimated, so p, the interval, se and df are NaN; when every seed and point has
the same difference, p is 1 for a zero gap and 0 otherwise, with the interval collapsed on the gap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import signal, stats

LEVEL = 0.95
N_RESAMPLES = 2_000  # endpoint Monte Carlo error ~0.06 sd of the mean, 3% of the half-width
BOOTSTRAP_SEED = 0  # fixed, so a report rendered twice from the same store is identical


@dataclass(frozen=True)
class PairedGap:
    """A method's gap to its baseline on the same test points (accuracy points, i.e. %)."""

    gap: float  # mean of method - baseline over runs and points
    low: float  # bootstrap interval over test points (LEVEL)
    high: float
    p: float  # exact sign-flip test on per-point, run-averaged differences, two-sided
    seed_sd: float  # standard deviation (ddof 1) of the per-run gaps; NaN for one run
    n_runs: int
    n_points: int
    b: int  # (run, point) pairs only the method gets right (binary flags; descriptive, not the test)
    c: int  # ... only the baseline

    def __getitem__(self, key: str):  # mapping-style access, as the API allows
        return getattr(self, key)


def bootstrap_ci(values: np.ndarray, level: float = LEVEL, n_resamples: int = N_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron & Tibshirani 1993) of the mean of `values` over test points.

    Resampling n points with replacement only changes how often each distinct value is drawn, so we draw
    those counts from a multinomial instead of n indices: the same distribution as scipy.stats.bootstrap
    (method='percentile'), at a cost independent of n (per-point values take only a few distinct levels).
    """
    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0:
        return math.nan, math.nan
    levels, counts = np.unique(v, return_counts=True)
    draws = np.random.default_rng(seed).multinomial(v.size, counts / v.size, size=n_resamples)
    means = draws @ levels / v.size
    tail = (1 - level) / 2
    lo, hi = np.percentile(means, [100 * tail, 100 * (1 - tail)])
    return float(lo), float(hi)


def _lattice(d: np.ndarray, runs: int) -> int | None:
    """The smallest q = runs x a (a = 1..64, the number of attacks a per-point share can average) that puts
    every d_i on the integer lattice d_i q; None when there is none (real-valued input)."""
    for a in range(1, 65):
        q = runs * a
        if np.allclose(np.rint(d * q), d * q, atol=1e-6):
            return q
    return None


def _sign_flip_p(d: np.ndarray, runs: int) -> float:
    """Exact two-sided p of the sign-flip test for per-point differences `d` (averages over `runs` runs).

    On the lattice k_i = d_i q (integers), the statistic S = sum_i s_i |k_i| with independent fair signs:
    points sharing one |k| value v contribute v (2 B - c), B ~ Binomial(c, 1/2), so the null distribution of
    S is a convolution of a few scaled binomials, computed exactly (by FFT when large; one binomial, i.e.
    McNemar, when every |k| is equal). Off the lattice: 100,000 random sign vectors."""
    q = _lattice(d, runs)
    if q is None:
        return _sign_flip_p_mc(d)
    k = np.abs(np.rint(d * q)).astype(np.int64)
    observed = abs(int(np.rint(np.sum(d) * q)))
    values, counts = np.unique(k[k > 0], return_counts=True)
    if values.size == 0:
        return 1.0
    g = int(np.gcd.reduce(values))  # the coarsest lattice the data allow: smaller arrays, same test
    values, observed = values // g, observed / g
    dist = np.array([1.0])  # P(S = s) for s = -offset .. offset
    offset = 0
    for v, c in zip(values.tolist(), counts.tolist()):
        spread = np.zeros(2 * v * c + 1)
        spread[::2 * v] = stats.binom.pmf(np.arange(c + 1), c, 0.5)  # B = b puts v (2b - c) at index 2vb
        small = min(dist.size, spread.size) < 64 or dist.size * spread.size < 4_000_000
        dist = np.convolve(dist, spread) if small else np.clip(signal.fftconvolve(dist, spread), 0.0, None)
        offset += v * c
    s = np.arange(-offset, offset + 1)
    return float(min(1.0, dist[np.abs(s) >= observed - 1e-9].sum()))


def _sign_flip_p_mc(d: np.ndarray, n_resamples: int = 100_000, seed: int = BOOTSTRAP_SEED) -> float:
    rng = np.random.default_rng(seed)
    observed = abs(d.sum())
    hits = 0
    for start in range(0, n_resamples, 10_000):
        signs = rng.choice([-1.0, 1.0], size=(min(10_000, n_resamples - start), d.size))
        hits += int(np.sum(np.abs(signs @ d) >= observed - 1e-12))
    return (hits + 1) / (n_resamples + 1)


def paired_gap(method, baseline, *, level: float = LEVEL, seed: int = BOOTSTRAP_SEED) -> PairedGap:
    """The gap of `method` to `baseline`, with its interval and p-value, test points as the unit.

    `method`, `baseline`: arrays of shape (n_runs, n_points), bool robust flags or per-point values in [0, 1]
    (e.g. the share of a set of attacks survived); row i of one is seed-matched with row i of the other, and
    every row is on the same test points. A 1-D array is one run."""
    m, b = np.atleast_2d(np.asarray(method, dtype=float)), np.atleast_2d(np.asarray(baseline, dtype=float))
    if m.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {m.shape} vs {b.shape} (rows are seed-matched runs)")
    if m.size == 0:
        raise ValueError("paired_gap needs at least one run and one test point")
    if not (np.isfinite(m).all() and np.isfinite(b).all()):
        raise ValueError("paired_gap takes finite values (robust flags or shares in [0, 1])")
    runs, points = m.shape
    diff = m - b
    per_point = diff.mean(axis=0)
    lo, hi = bootstrap_ci(per_point, level, seed=seed)
    per_run = diff.mean(axis=1)
    binary = np.isin(m, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all()
    return PairedGap(gap=100 * float(per_point.mean()), low=100 * lo, high=100 * hi, p=_sign_flip_p(per_point, runs),
                     seed_sd=100 * float(per_run.std(ddof=1)) if runs > 1 else math.nan,
                     n_runs=runs, n_points=points,
                     b=int(np.sum((m == 1) & (b == 0))) if binary else -1,
                     c=int(np.sum((m == 0) & (b == 1))) if binary else -1)


@dataclass(frozen=True)
class SeedGap:
    """A method's gap to its baseline with training seeds as random draws (accuracy points, i.e. %)."""

    gap: float  # mean of the per-seed gaps
    low: float  # interval at `level` over seeds and test points; NaN with one seed or one point
    high: float
    p: float  # two-sided t test, seeds and test points as random; NaN with one seed or one point
    per_seed: tuple[float, ...]  # each seed's gap, in row order
    seeds_lower: int  # seeds whose gap is below 0 (the method below the baseline)
    n_seeds: int
    n_points: int
    se: float  # standard error of `gap`; NaN with one seed or one point
    df: float  # degrees of freedom of the t reference, n_seeds - 1; NaN with one seed or one point

    def __getitem__(self, key: str):  # mapping-style access, like PairedGap
        return getattr(self, key)


def _variance_of_mean(d: np.ndarray) -> float:
    """Var(mean of d) for a (seeds x points) table under the crossed random-effects model
    d[s, i] = mu + a_s + b_i + e_si, each variance component estimated by ANOVA and truncated at zero."""
    seeds, points = d.shape
    row, col, grand = d.mean(axis=1), d.mean(axis=0), d.mean()
    ms_seed = points * row.var(ddof=1)
    ms_point = seeds * col.var(ddof=1)
    resid = d - row[:, None] - col[None, :] + grand
    ms_err = float(np.sum(resid ** 2)) / ((seeds - 1) * (points - 1))
    # (MS_seed + MS_point - MS_err) / (S N) with sigma_a^2 = (MS_seed - MS_err) / N and sigma_b^2 =
    # (MS_point - MS_err) / S each floored at 0: never below the plain ANOVA value nor var(per seed) / S.
    return (max(ms_seed, ms_err) + max(ms_point, ms_err) - ms_err) / (seeds * points)


def seed_gap(method, baseline, *, level: float = LEVEL) -> SeedGap:
    """The gap of `method` to `baseline` with training seeds and test points both as random draws.

    `method`, `baseline`: arrays of shape (n_seeds, n_points), bool robust flags or per-point values in
    [0, 1]; row s of one is seed-matched with row s of the other, every row on the same test points. A 1-D
    array is one seed."""
    m, b = np.asarray(method, dtype=float), np.asarray(baseline, dtype=float)
    if m.ndim > 2 or b.ndim > 2:
        raise ValueError(f"seed_gap takes (n_seeds, n_points) arrays, got {m.ndim}-D and {b.ndim}-D")
    m, b = np.atleast_2d(m), np.atleast_2d(b)
    if m.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {m.shape} vs {b.shape} (rows are seed-matched runs)")
    if m.size == 0:
        raise ValueError("seed_gap needs at least one seed and one test point")
    if not (np.isfinite(m).all() and np.isfinite(b).all()):
        raise ValueError("seed_gap takes finite values (robust flags or shares in [0, 1])")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    seeds, points = m.shape
    d = m - b
    per_seed = 100 * d.mean(axis=1)
    gap = float(np.mean(per_seed))
    common = dict(gap=gap, per_seed=tuple(float(x) for x in per_seed), seeds_lower=int(np.sum(per_seed < 0)),
                  n_seeds=seeds, n_points=points)
    if seeds == 1 or points == 1:  # a variance component that cannot be estimated is not guessed
        return SeedGap(low=math.nan, high=math.nan, p=math.nan, se=math.nan, df=math.nan, **common)
    df = float(seeds - 1)
    if np.all(d == d.flat[0]):  # every seed and point the same difference: no variation to test against
        return SeedGap(low=gap, high=gap, p=1.0 if gap == 0 else 0.0, se=0.0, df=df, **common)
    se = 100 * math.sqrt(_variance_of_mean(d))
    half = float(stats.t.ppf((1 + level) / 2, df)) * se
    p = float(2 * stats.t.sf(abs(gap) / se, df))
    return SeedGap(low=gap - half, high=gap + half, p=p, se=se, df=df, **common)
