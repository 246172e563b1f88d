"""Report statistics against hand-computed values on tiny flag vectors, and against scipy."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bench.report import Selection, baseline_for, build_settings, load_frame, select
from bench.report_stats import (bootstrap_ci, cell_stats, flag_matrix, gap_stats, mcnemar, mean_std, pair_runs,
                                significance)
from bench.store import Store
from test_report_store import add_run


def bits(text: str) -> list[bool]:
    return [c == "1" for c in text]


# ---- bootstrap ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values,expected", [
    # n = 4, three robust: the resampled mean is Binomial(4, 3/4)/4 with P(0) = 1/256, P(<= 0.25) = 13/256,
    # P(<= 0.75) = 175/256: the 2.5% quantile is 0.25, the 97.5% quantile 1.0.
    ([1, 1, 1, 0], (0.25, 1.0)),
    # n = 20, half robust: Binomial(20, 1/2)/20 with P(X <= 5) = 0.0207, P(X <= 6) = 0.0577,
    # P(X <= 13) = 0.9423, P(X <= 14) = 0.9793: quantiles 6/20 and 14/20.
    ([1] * 10 + [0] * 10, (0.30, 0.70)),
    ([1, 1, 1], (1.0, 1.0)),  # no variation, no interval
    ([1, 0], (0.0, 1.0)),  # P(0) = P(1) = 1/4
])
def test_bootstrap_matches_hand_computed_quantiles(values, expected):
    lo, hi = bootstrap_ci(np.array(values, float), n_resamples=100_000)
    assert (lo, hi) == pytest.approx(expected)


def test_bootstrap_agrees_with_scipy_percentile_bootstrap():
    rng = np.random.default_rng(3)
    seed_mean = rng.integers(0, 4, size=300) / 3  # per-point share of 3 seeds that are robust
    ours = bootstrap_ci(seed_mean)
    ref = stats.bootstrap((seed_mean,), np.mean, method="percentile", n_resamples=20_000,
                          random_state=np.random.default_rng(0)).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high), abs=0.006)


def test_bootstrap_of_paired_differences_and_empty_input():
    lo, hi = bootstrap_ci(np.array([1.0, -1.0, 0.0, 0.0]), n_resamples=50_000)
    assert lo < 0 < hi and lo == pytest.approx(-hi)  # symmetric differences, symmetric interval
    assert all(math.isnan(x) for x in bootstrap_ci(np.array([])))


# ---- McNemar ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,baseline,b,c,p", [
    ("111110", "000000", 5, 0, 2 / 2**5),  # two-sided exact: 2 * 0.5^5 = 0.0625
    ("1111110", "0000001", 6, 1, 2 * (1 + 7) / 2**7),  # 2 * P(X <= 1 | 7, 1/2) = 0.125
    ("1100", "0011", 2, 2, 1.0),  # balanced discordance
    ("1010", "1010", 0, 0, 1.0),  # no discordant pair: nothing to test
])
def test_mcnemar_exact_against_hand_computed(method, baseline, b, c, p):
    res = mcnemar(np.array(bits(method)), np.array(bits(baseline)))
    assert (res.b, res.c) == (b, c) and res.p == pytest.approx(p)


def test_mcnemar_pools_paired_runs_and_matches_the_binomial_formula():
    rng = np.random.default_rng(0)
    base = rng.random((2, 200)) < 0.5
    method = base.copy()
    flip = np.flatnonzero(~base.ravel())[:30]  # 30 points only the method gets right
    method.ravel()[flip] = True
    worse = np.flatnonzero(base.ravel())[:15]  # 15 only the baseline gets right
    method.ravel()[worse] = False
    res = mcnemar(method, base)
    assert (res.b, res.c) == (30, 15)
    assert res.p == pytest.approx(min(1.0, 2 * stats.binom.cdf(15, 45, 0.5)))  # statsmodels' exact formula
    with pytest.raises(ValueError, match="shape"):
        mcnemar(method, base[:1])


def test_pair_runs_by_seed_then_by_rank():
    assert pair_runs([2, 0, 1], [0, 1, 5]) == [(1, 0), (2, 1)]  # seeds 0 and 1 in both
    assert pair_runs([7, 3], [10, 11, 12]) == [(1, 0), (0, 1)]  # no common seed: k-th smallest with k-th


def test_small_helpers():
    assert mean_std([0.5, 0.25]) == pytest.approx((0.375, math.sqrt(2 * 0.125**2)))
    assert math.isnan(mean_std([0.5])[1])
    assert [significance(p) for p in (0.0009, 0.009, 0.04, 0.05, math.nan)] == ["***", "**", "*", "", ""]
    assert flag_matrix(["0110", "1000"]).tolist() == [bits("0110"), bits("1000")]
    with pytest.raises(ValueError, match="same test points"):
        flag_matrix(["01", "011"])


# ---- table-level statistics on a hand-made store ------------------------------------------------------------

@pytest.fixture
def tiny(tmp_path):
    """4 test points. AT (PGD) seeds 0, 1 and GAIRAT (PGD) seed 0; pgd20 seen, cw20 unseen."""
    store = Store(tmp_path)
    add_run(store, "at", "pgd", 0, {"natural": bits("1111"), "pgd20": bits("1100"), "cw20": bits("1100")})
    add_run(store, "at", "pgd", 1, {"natural": bits("1111"), "pgd20": bits("1000"), "cw20": bits("1100")})
    add_run(store, "gairat", "pgd", 0, {"natural": bits("1111"), "pgd20": bits("1110"), "cw20": bits("1000")})
    chosen, pool = select(load_frame(tmp_path), Selection())
    (setting,) = build_settings(store, chosen, pool, Selection())
    return setting


def test_cell_stats_hand_computed(tiny):
    cells = cell_stats(tiny).set_index(["variant", "eval_attack"])
    at_pgd = cells.loc[("AT (PGD)", "pgd20")]
    assert at_pgd["mean"] == pytest.approx(37.5) and at_pgd["std"] == pytest.approx(100 * math.sqrt(2 * 0.125**2))
    assert at_pgd["n_seeds"] == 2 and at_pgd["n_points"] == 4 and at_pgd["seen"]
    assert not cells.loc[("AT (PGD)", "cw20"), "seen"]
    assert math.isnan(cells.loc[("GAIRAT (PGD)", "pgd20"), "std"])  # one seed
    best = cells["best"]
    assert best[("GAIRAT (PGD)", "pgd20")] and not best[("AT (PGD)", "pgd20")]
    assert best[("AT (PGD)", "cw20")] and best[("AT (PGD)", "natural")] and best[("GAIRAT (PGD)", "natural")]
    # worst = per-example AND of natural, pgd20, cw20: AT seeds 1100 & 1000 -> 37.5, GAIRAT 1000 -> 25
    assert cells.loc[("AT (PGD)", "worst"), "mean"] == pytest.approx(37.5)
    assert cells.loc[("GAIRAT (PGD)", "worst"), "mean"] == pytest.approx(25.0)


def test_gap_stats_hand_computed(tiny):
    baselines = [v for v in tiny.variants if v.method == "at"]
    gaps, per_attack = gap_stats(tiny, lambda v: baseline_for(v, baselines))
    (g,) = gaps.to_dict("records")  # AT is never compared with itself
    assert (g["variant"], g["baseline"], g["seen_attacks"], g["unseen_attacks"]) == \
        ("GAIRAT (PGD)", "AT (PGD)", "pgd20", "cw20")
    assert g["seen_acc"] == pytest.approx(75.0) and g["seen_gap"] == pytest.approx(75.0 - 37.5)
    # McNemar pairs GAIRAT seed 0 with AT seed 0 only: 1110 vs 1100 -> b = 1, c = 0
    assert (g["seen_b"], g["seen_c"], g["seen_p"]) == (1, 0, pytest.approx(1.0))
    assert g["unseen_mean_gap"] == pytest.approx(25.0 - 50.0) and g["unseen_worst_gap"] == pytest.approx(-25.0)
    assert (g["unseen_worst_b"], g["unseen_worst_c"]) == (0, 1)
    assert math.isnan(g["unseen_mean_p"])  # a mean over attacks is not a binary outcome: no McNemar
    assert g["seen_gap_low"] <= g["seen_gap"] <= g["seen_gap_high"]
    nat = per_attack.set_index("eval_attack").loc["natural"]
    assert (nat["gap"], nat["gap_low"], nat["gap_high"], nat["p"]) == (0.0, 0.0, 0.0, 1.0)
