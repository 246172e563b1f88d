"""bench.stats.paired_gap: oracle values, the reduction to McNemar, and its calibration under the null that
stacked McNemar fails (seeds sharing test points, points that favour one side in every seed)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from bench.stats import paired_gap


def brute_force_p(d: np.ndarray) -> float:
    """P(|sum s_i d_i| >= |sum d_i|) over all 2^n sign vectors: the definition, for small n."""
    observed = abs(d.sum())
    sums = [abs(np.dot(s, d)) for s in itertools.product((-1, 1), repeat=d.size)]
    return float(np.mean([x >= observed - 1e-12 for x in sums]))


def test_hand_computed_case():
    # two runs, three points: per-point differences (1, 1, 0.5) -> sums +-2 +-2 +-1 over 8 sign vectors;
    # only (+,+,+) and (-,-,-) reach |S| = 5: p = 2/8.
    method = np.array([[1, 1, 1], [1, 1, 0]], dtype=bool)
    baseline = np.array([[0, 0, 0], [0, 0, 0]], dtype=bool)
    g = paired_gap(method, baseline)
    assert g.p == pytest.approx(0.25)
    assert g.gap == pytest.approx(100 * 5 / 6)
    # per-run gaps 100% and 66.7%: sample sd = |100 - 66.67| / sqrt(2)
    assert g.seed_sd == pytest.approx(100 / 3 / math.sqrt(2))
    assert (g.b, g.c, g.n_runs, g.n_points) == (5, 0, 2, 3)
    assert g["gap"] == g.gap  # mapping-style access


@pytest.mark.parametrize("seed", range(6))
def test_exact_p_matches_enumeration(seed):
    rng = np.random.default_rng(seed)
    runs, points = rng.integers(1, 4), 10
    method = rng.random((runs, points)) < 0.6
    baseline = rng.random((runs, points)) < 0.4
    d = (method.astype(float) - baseline).mean(axis=0)
    assert paired_gap(method, baseline).p == pytest.approx(brute_force_p(d), abs=1e-12)


def test_share_inputs_on_a_lattice_are_exact():
    # per-point shares of 3 attacks survived, 2 runs: differences are multiples of 1/6
    rng = np.random.default_rng(3)
    method = rng.integers(0, 4, size=(2, 9)) / 3
    baseline = rng.integers(0, 4, size=(2, 9)) / 3
    d = (method - baseline).mean(axis=0)
    assert paired_gap(method, baseline).p == pytest.approx(brute_force_p(d), abs=1e-12)


def test_one_run_is_exact_mcnemar():
    rng = np.random.default_rng(0)
    method, baseline = rng.random(500) < 0.55, rng.random(500) < 0.5
    g = paired_gap(method[None], baseline[None])
    b, c = int(np.sum(method & ~baseline)), int(np.sum(~method & baseline))
    assert (g.b, g.c) == (b, c)
    assert g.p == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)
    assert math.isnan(g.seed_sd)


def test_no_difference_gives_p_one_and_a_zero_interval():
    flags = np.random.default_rng(1).random((3, 50)) < 0.5
    g = paired_gap(flags, flags)
    assert (g.gap, g.low, g.high, g.p) == (0.0, 0.0, 0.0, 1.0)


def test_interval_brackets_the_gap_and_narrows_with_points():
    rng = np.random.default_rng(2)
    small = paired_gap(rng.random((2, 100)) < 0.6, rng.random((2, 100)) < 0.5)
    large = paired_gap(rng.random((2, 3000)) < 0.6, rng.random((2, 3000)) < 0.5)
    for g in (small, large):
        assert g.low <= g.gap <= g.high
    assert large.high - large.low < (small.high - small.low) / 3


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        paired_gap(np.zeros((2, 5), bool), np.zeros((1, 5), bool))
    with pytest.raises(ValueError, match="finite"):
        paired_gap(np.array([[np.nan, 1.0]]), np.array([[0.0, 1.0]]))


def shared_points_null(rng, runs: int, points: int, spread: float = 0.3):
    """No difference in the population, but each test point favours one side in every seed: P(robust) is
    p_i + delta_i for the method and p_i - delta_i for the baseline, delta_i symmetric around 0 and fixed
    across the runs (the seeds reuse the test points)."""
    p = rng.uniform(0.25, 0.75, points)
    delta = np.clip(rng.normal(0, spread, points), -0.25, 0.25)
    method = rng.random((runs, points)) < p + delta
    baseline = rng.random((runs, points)) < p - delta
    return method, baseline


def stacked_mcnemar_p(method, baseline) -> float:
    """The test the report used before: every discordant (run, point) pair an independent coin flip."""
    b, c = int(np.sum(method & ~baseline)), int(np.sum(~method & baseline))
    return 1.0 if b + c == 0 else stats.binomtest(b, b + c, 0.5).pvalue


@pytest.mark.parametrize("runs", [3, 5])
def test_false_positive_rate_under_the_shared_points_null(runs):
    rng = np.random.default_rng(runs)
    sims, alpha = 400, 0.05
    new, old = [], []
    for _ in range(sims):
        method, baseline = shared_points_null(rng, runs, 300)
        new.append(paired_gap(method, baseline).p < alpha)
        old.append(stacked_mcnemar_p(method, baseline) < alpha)
    new_rate, old_rate = np.mean(new), np.mean(old)
    # 400 simulations: the standard error of a 5% rate is 1.1 points; 7.5% is 2.3 SE above nominal.
    assert new_rate <= 0.075, f"paired_gap rejects a true null in {new_rate:.1%} of simulations"
    assert old_rate >= 0.09, f"the simulation lacks teeth: stacked McNemar rejects only {old_rate:.1%}"


def test_power_against_a_real_difference():
    rng = np.random.default_rng(7)
    p = rng.uniform(0.3, 0.7, 300)
    method = rng.random((3, 300)) < p + 0.12
    baseline = rng.random((3, 300)) < p
    g = paired_gap(method, baseline)
    assert g.p < 0.001 and g.low > 0
