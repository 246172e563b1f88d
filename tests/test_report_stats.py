"""Report statistics against hand-computed values on tiny flag vectors, and against scipy."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bench.report import Selection, load_frame
from bench.report.frame import baseline_for, build_settings, flag_matrix, select
from bench.report.stats import cell_stats, gap_stats, mean_std, pair_runs, significance
from bench.store import Store


def bits(text: str) -> list[bool]:
    return [c == "1" for c in text]


# ---- bootstrap and the paired gap: tests/test_stats.py (bench.stats) ----------------------------------------

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
def tiny(tmp_path, add_run):
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
    assert g["seen_acc"] == pytest.approx(75.0)
    # gaps pair GAIRAT seed 0 with AT seed 0 only: pgd20 1110 vs 1100 -> +25 points, b = 1, c = 0, and one
    # discordant point is a fair coin under H0: p = 1
    assert g["seen_gap"] == pytest.approx(25.0)
    assert (g["seen_b"], g["seen_c"], g["seen_p"]) == (1, 0, pytest.approx(1.0))
    assert g["unseen_mean_gap"] == pytest.approx(25.0 - 50.0) and g["unseen_worst_gap"] == pytest.approx(-25.0)
    assert (g["unseen_worst_b"], g["unseen_worst_c"]) == (0, 1)
    assert g["unseen_mean_p"] == pytest.approx(1.0)  # every gap has a p-value now, means over attacks too
    assert math.isnan(g["seen_gap_seed_sd"])  # one seed pair: no spread over seeds
    assert g["related_attacks"] == "" and math.isnan(g["related_gap"])  # no related attack in this store
    assert g["seen_gap_low"] <= g["seen_gap"] <= g["seen_gap_high"]
    nat = per_attack.set_index("eval_attack").loc["natural"]
    assert (nat["gap"], nat["gap_low"], nat["gap_high"], nat["p"]) == (0.0, 0.0, 0.0, 1.0)


def test_gap_table_keeps_seen_related_and_unseen_apart(tmp_path, add_run):
    """LRAT (SAA): AA and APGD-T are related (the paper's "(rel)"), PGD-20 and CW-20 unseen; two seeds each, so
    the gaps pool seed pairs and report the sd of the per-seed gaps."""
    store = Store(tmp_path)
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        add_run(store, "at", "saa", seed, {a: (rng.random(40) < 0.5).tolist() for a in ("pgd20", "cw20", "apgd-t", "aa")})
        add_run(store, "lrat", "saa", seed, {a: (rng.random(40) < 0.6).tolist() for a in ("pgd20", "cw20", "apgd-t", "aa")})
    chosen, pool = select(load_frame(tmp_path), Selection())
    (setting,) = build_settings(store, chosen, pool, Selection())
    baselines = [v for v in setting.variants if v.method == "at"]
    gaps, per_attack = gap_stats(setting, lambda v: baseline_for(v, baselines))
    (g,) = gaps.to_dict("records")
    assert (g["seen_attacks"], g["related_attacks"], g["unseen_attacks"]) == ("", "apgd-t,aa", "pgd20,cw20")
    assert math.isnan(g["seen_gap"]) and np.isfinite(g["related_p"]) and np.isfinite(g["unseen_worst_p"])
    per_seed = []
    for v in setting.variants:
        m = np.stack([setting.flags[(r, "pgd20")] & setting.flags[(r, "cw20")] for r in v.run_ids])
        per_seed.append(m.mean(axis=1))
    base_acc, lrat_acc = (per_seed[0], per_seed[1]) if setting.variants[0].method == "at" else (per_seed[1], per_seed[0])
    assert g["unseen_worst_gap"] == pytest.approx(100 * np.mean(lrat_acc - base_acc))
    assert g["unseen_worst_gap_seed_sd"] == pytest.approx(100 * np.std(lrat_acc - base_acc, ddof=1))
    rel = per_attack.set_index("eval_attack")["relation"].to_dict()
    assert rel == {"pgd20": "unseen", "cw20": "unseen", "apgd-t": "related", "aa": "related", "worst": "unseen"}
