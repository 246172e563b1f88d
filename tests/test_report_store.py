"""The report's selection and refusals, on synthetic stores (tests/conftest.py: `add_run`, `paper_store`)."""
from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.report import Selection, load_frame, parse_selection
from bench.report.frame import attack_order, build_settings, build_variants, select
from bench.store import Store


# ---- selection ----------------------------------------------------------------------------------------------

def test_variants_baselines_and_seen_sets(tmp_path, paper_store):
    store = paper_store(tmp_path, extra=True)
    chosen, pool = select(load_frame(tmp_path), Selection())
    (setting,) = build_settings(store, chosen, pool, Selection())
    assert [v.label for v in setting.variants] == ["AT (PGD)", "GAIRAT (PGD)", "LRAT (CW)"]
    assert all(v.seeds == (0, 1) for v in setting.variants)
    assert setting.variant("AT (PGD)").seen == {"pgd20"} and setting.variant("LRAT (CW)").seen == {"cw20"}
    assert setting.attacks == ("natural", "pgd20", "cw20", "aa", "worst") and setting.n_points == 400


def test_configs_that_differ_beyond_the_seed_are_separate_rows(tmp_path, add_run):
    store = Store(tmp_path)
    flags = {"natural": [True, False], "pgd20": [True, False]}
    for lam in (-1.0, 0.0):
        add_run(store, "gairat", "pgd", 0, flags, params={"lam": lam})
    add_run(store, "gairat", "pgd", 1, flags, params={"lam": 0.0})
    chosen, pool = select(load_frame(tmp_path), Selection())
    (setting,) = build_settings(store, chosen, pool, Selection())
    assert sorted(v.label for v in setting.variants) == ["GAIRAT (PGD) [p_lam=-1.0]", "GAIRAT (PGD) [p_lam=0.0]"]
    assert setting.variant("GAIRAT (PGD) [p_lam=0.0]").seeds == (0, 1)


def test_rows_on_different_test_points_never_pair(tmp_path, add_run):
    store = Store(tmp_path)
    flags = {"natural": [True, False], "pgd20": [False, False]}
    add_run(store, "at", "pgd", 0, flags, row_extra={"points_sha": "aaaa"})
    add_run(store, "gairat", "pgd", 0, flags, row_extra={"points_sha": "bbbb"})
    chosen, pool = select(load_frame(tmp_path), Selection())
    settings = build_settings(store, chosen, pool, Selection())
    assert [[v.label for v in s.variants] for s in settings] == [["AT (PGD)"], ["GAIRAT (PGD)"]]
    assert settings[0].slug.endswith("-aaaa")


def test_baseline_is_added_as_reference_when_outside_the_selection(tmp_path, paper_store):
    store = paper_store(tmp_path, seeds=(0,), n=50)
    sel = parse_selection(methods="lrat", train_attacks="cw")
    chosen, pool = select(load_frame(tmp_path), sel)
    (setting,) = build_settings(store, chosen, pool, sel)
    # no AT (CW) in the store: the fallback is AT (PGD), shown as a reference row
    assert [(v.label, v.reference) for v in setting.variants] == [("AT (PGD)", True), ("LRAT (CW)", False)]


@pytest.mark.parametrize("args,message", [
    (["--methods", "lrta"], "Did you mean: lrat?"),
    (["--methods", "mail"], "No finished runs with method 'mail'"),
    (["--train-attack", "pdg"], "Did you mean: pgd?"),
    (["--dataset", "synthtic"], "Did you mean: synthetic?"),
    (["--dataset", "cifar10"], "No finished runs with dataset 'cifar10'"),
    (["--model", "resnet18"], "No finished runs with model 'resnet18'"),
    (["--baseline", "atx"], "Unknown baseline method 'atx'. Did you mean: at?"),
])
def test_bad_selection_is_refused_with_exit_2_and_writes_nothing(tmp_path, args, message, paper_store):
    paper_store(tmp_path / "results", seeds=(0,), n=20, extra=True)
    out = tmp_path / "reports"
    result = CliRunner().invoke(main, ["report", "--results", str(tmp_path / "results"), "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_irat_alias_selects_gairat(tmp_path, paper_store):
    paper_store(tmp_path, seeds=(0,), n=20)
    chosen, _ = select(load_frame(tmp_path), parse_selection(methods="irat"))
    assert set(chosen.method) == {"gairat"}


def test_empty_store_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["report", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "No finished runs in" in result.output
    assert not (tmp_path / "o").exists()


def test_labels_and_orders_come_from_the_catalog():
    """Known names in the catalog's order and labels; an unknown method (a plugin) upper-cased, after them."""
    rows = [("zeta", "pgd"), ("lrat", "saa+cw"), ("at", "cw"), ("at", "pgd"), ("gairat", "fgsm")]
    runs = pd.DataFrame([{"run_id": f"r{i}", "method": m, "train_attack": a, "seed": 0}
                         for i, (m, a) in enumerate(rows)])
    assert [v.label for v in build_variants(runs, {})] == ["AT (PGD)", "AT (CW)", "GAIRAT (FGSM)", "LRAT (SAA+CW)",
                                                           "ZETA (PGD)"]
    assert attack_order(["zz", "worst", "aa", "natural", "cw20", "pgd20"]) == ["natural", "pgd20", "cw20", "aa",
                                                                              "worst", "zz"]
