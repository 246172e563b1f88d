"""The report's verdicts come from the seeds (bench.stats.seed_gap): a 3-seed store of AT and GAIRAT gets the
seed-level gap columns and a quotable Answer first; fewer seeds get no verdict; a best checkpoint saved before
the method's reweighting began is named."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.report import Selection, write_report
from bench.stats import seed_gap
from bench.store import Store

N = 300


def _store(root, add_run, seeds=(0, 1, 2), gairat_hist=None):
    """AT and GAIRAT with PGD: GAIRAT 12 points lower on the unseen CW-20 in every seed, equal on PGD-20."""
    store = Store(root)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        u = rng.random(N)
        base = {"natural": u < 0.8, "pgd20": u < 0.5, "cw20": u < 0.48}
        low = {"natural": u < 0.8, "pgd20": u < 0.5, "cw20": u < 0.36}
        add_run(store, "at", "pgd", seed, {a: f.tolist() for a, f in base.items()}, checkpoints=("best", "last"))
        add_run(store, "gairat", "pgd", seed, {a: f.tolist() for a, f in low.items()}, hist=gairat_hist,
                checkpoints=("best", "last"))
    return store


def test_three_seed_store_reports_seed_level_columns_and_a_verdict(tmp_path, add_run):
    _store(tmp_path / "r", add_run)
    out = tmp_path / "out"
    write_report(tmp_path / "r", out, Selection(compile_pdf=False))
    gaps = pd.read_csv(out / "gap_table.csv")
    row = gaps[gaps.variant == "GAIRAT (PGD)"].iloc[0]
    for key in ("seen", "unseen_mean", "unseen_worst"):
        for col in ("per_seed", "seed_low", "seed_high", "seed_p", "seeds_lower"):
            assert f"{key}_{col}" in gaps.columns
    per_seed = [float(x) for x in row["unseen_worst_per_seed"].split(";")]
    expected = [-100 * np.mean((u >= 0.36) & (u < 0.48)) for u in (np.random.default_rng(s).random(N) for s in (0, 1, 2))]
    assert per_seed == pytest.approx(expected, abs=0.005)  # each seed's own gap, in seed order
    assert row["unseen_worst_gap"] == pytest.approx(np.mean(expected), abs=0.005)  # the CSV rounds to 0.01
    assert row["unseen_worst_seeds_lower"] == 3 and row["unseen_worst_seed_p"] < 0.05
    assert row["seen_per_seed"] == "0.00;0.00;0.00" and row["seen_seed_p"] == 1.0
    summary = (out / "summary.md").read_text()
    answer = summary[summary.index("## Answer"):summary.index("## ", summary.index("## Answer") + 3)]
    assert "**GAIRAT (PGD)** vs AT (PGD) (3 seeds)" in answer
    assert "on the seen attacks (PGD-20) **no clear difference**, +0.00 points" in answer
    seeds_text = ", ".join(f"{g:+.1f}" for g in expected)
    assert (f"on the unseen attack (CW-20) **lower**, {np.mean(expected):+.2f} points (per seed {seeds_text}; 3 of 3 "
            "seeds lower; seed-level 95% interval") in answer
    tex = (out / "report.tex").read_text()
    assert tex.index(r"\section*{Answer}") < tex.index(r"\input{table")  # the answer opens the PDF


def test_seed_columns_equal_seed_gap_on_the_flags(tmp_path, add_run):
    """The report's seed columns are bench.stats.seed_gap of the stored flags, seed-matched."""
    store = Store(tmp_path / "r")
    rng = np.random.default_rng(5)
    flags = {}
    for seed in (0, 1, 2):
        for method, acc in (("at", 0.5), ("gairat", 0.45)):
            f = rng.random(N) < acc + rng.uniform(-0.05, 0.05)
            flags[(method, seed)] = f
            add_run(store, method, "pgd", seed, {"natural": [True] * N, "pgd20": f.tolist()})
    out = tmp_path / "out"
    write_report(tmp_path / "r", out, Selection(compile_pdf=False))
    row = pd.read_csv(out / "gap_table.csv").iloc[0]
    expected = seed_gap([flags[("gairat", s)] for s in (0, 1, 2)], [flags[("at", s)] for s in (0, 1, 2)])
    assert row["seen_seed_p"] == pytest.approx(expected.p, rel=5e-3)  # the CSV keeps 3 significant digits
    assert row["seen_seed_low"] == pytest.approx(expected.low, abs=0.005)  # and points to 0.01
    assert row["seen_seed_high"] == pytest.approx(expected.high, abs=0.005)
    assert row["seen_gap"] == pytest.approx(np.mean(expected.per_seed), abs=0.005)


def test_one_seed_gets_no_verdict(tmp_path, add_run):
    _store(tmp_path / "r", add_run, seeds=(0,))
    out = tmp_path / "out"
    write_report(tmp_path / "r", out, Selection(compile_pdf=False))
    summary = (out / "summary.md").read_text()
    assert "no verdict: one seed compares two trained models, not two methods" in summary
    assert "**lower**" not in summary and "**higher**" not in summary
    row = pd.read_csv(out / "gap_table.csv").iloc[0]
    assert np.isnan(row["unseen_worst_seed_p"]) and row["unseen_worst_p"] < 0.001  # these models do differ


def test_best_checkpoint_before_reweighting_is_named(tmp_path, add_run, history):
    hist = history(3, "gairat")
    for e in hist:
        e.pop("best", None)
    hist[0]["best"] = True  # the best epoch is the burn-in (epoch 1, not reweighted); epochs 2-3 reweight
    _store(tmp_path / "r", add_run, gairat_hist=hist)
    out = tmp_path / "out"
    write_report(tmp_path / "r", out, Selection(compile_pdf=False))
    summary = (out / "summary.md").read_text()
    assert ("Best checkpoints saved before the method's reweighting began (plain AT trained for fewer epochs, not "
            "the method): GAIRAT (PGD) seed 0, GAIRAT (PGD) seed 1, GAIRAT (PGD) seed 2") in summary
    write_report(tmp_path / "r", tmp_path / "last", Selection(compile_pdf=False, checkpoint="last"))
    assert "reweighting began" not in (tmp_path / "last" / "summary.md").read_text()
