"""Synthetic stores for the report tests (no training: rows made by the evaluator's own `make_row` and
`write_worst`, written with Store.write_eval, DONE marked last), and the report's selection and refusals."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.config import EvalConfig, TrainConfig
from bench.evaluate import make_row, write_worst
from bench.report import Selection, build_settings, load_frame, parse_selection, select
from bench.store import DONE, Store, eval_group, write_json

PROV = {"git_commit": "test", "device": "cpu (test)", "created_at": "2026-11-27T00:00:00+00:00"}
REWEIGHTED = ("gairat", "mail", "lrat")


def history(epochs: int, method: str = "at", seed: int = 0) -> list[dict]:
    """A plausible per-epoch history; reweighted runs carry weight statistics after a one-epoch burn-in,
    GAIRAT's drifting towards tiny weights as training goes on (the LRAT paper's Fig. 1a)."""
    rng = np.random.default_rng(seed)
    out = []
    for e in range(1, epochs + 1):
        h = {"epoch": e, "lr": 0.1, "train_loss": 2.0 / e, "val_natural": 0.5 + 0.03 * e + 0.01 * rng.random(),
             "val_pgd": 0.2 + 0.02 * e + (0.01 * e if method == "gairat" else 0.0), "seconds": 1.0,
             "reweighting": method in REWEIGHTED and e > 1}
        if h["reweighting"]:
            small = 0.3 + 0.5 * e / epochs if method == "gairat" else 0.1
            probs = np.r_[small, np.full(20, (1 - small) / 20)]
            counts = rng.multinomial(1000, probs).tolist()
            h.update({"w_mean": 1.0, "w_std": 0.5, "w_min": 0.0, "w_max": 4.3,
                      "w_frac_below_0.2": counts[0] / 1000, "w_hist": counts})
        out.append(h)
    return out


def add_run(store: Store, method: str, train_attack: str, seed: int, flags: dict[str, list[bool]], *,
            dataset: str = "synthetic", model: str = "small-cnn", eps: float = 8 / 255, epochs: int = 3,
            params: dict | None = None, checkpoints: tuple[str, ...] = ("best",), done: bool = True,
            hist: list[dict] | None = None, row_extra: dict | None = None) -> str:
    """One finished run with the given per-attack robust flags (the same flags for every checkpoint)."""
    cfg = TrainConfig(method=method, train_attack=train_attack, dataset=dataset, model=model, eps=eps,
                      epochs=epochs, seed=seed, method_params=params or {})
    run_id = cfg.run_id
    config = {"run_id": run_id, "train": cfg.to_dict(), "provenance": PROV}
    write_json(store.run_dir(run_id) / "config.json", config)
    write_json(store.run_dir(run_id) / "history.json",
               history(epochs, method, seed) if hist is None else hist)
    n = len(next(iter(flags.values())))
    ecfg = EvalConfig(attacks=tuple(flags), test_subset=n)
    for ckpt in checkpoints:
        group = eval_group(ckpt, "linf", eps, n)
        for attack, f in flags.items():
            row = {**make_row(config, ckpt, epochs, attack, list(f), eps, ecfg, 0.1, [], PROV), **(row_extra or {})}
            store.write_eval(run_id, group, attack, row, list(f))
        write_worst(store, run_id, group, config, ckpt, epochs, eps, ecfg, PROV)
    if done:
        store.mark(run_id, DONE)
    return run_id


def random_flags(rng: np.random.Generator, n: int, accs: dict[str, float]) -> dict[str, list[bool]]:
    """Nested flags (robust to a stronger attack implies robust to natural), each attack near its accuracy."""
    u = rng.random(n)
    return {a: (u < acc).tolist() for a, acc in accs.items()}


PAPER = {  # LRAT paper, Table 1 (%), the shape our synthetic store mimics
    ("at", "pgd"): {"natural": 83.2, "pgd20": 51.1, "cw20": 50.0, "aa": 46.1},
    ("gairat", "pgd"): {"natural": 79.7, "pgd20": 60.8, "cw20": 38.7, "aa": 32.1},
    ("lrat", "cw"): {"natural": 79.7, "pgd20": 50.0, "cw20": 54.3, "aa": 45.1},
}


def paper_store(root, seeds=(0, 1), n: int = 400, extra: bool = False) -> Store:
    """AT (PGD), GAIRAT (PGD), LRAT (CW) with the paper's accuracies, a few seeds, `n` test points."""
    store = Store(root)
    for (method, attack), accs in PAPER.items():
        for seed in seeds:
            rng = np.random.default_rng(1000 * seed + sum(map(ord, method + attack)))  # stable across processes
            add_run(store, method, attack, seed, random_flags(rng, n, {a: v / 100 for a, v in accs.items()}))
    if extra:  # a run that is not finished must not show up anywhere
        add_run(store, "mail", "pgd", 0, random_flags(np.random.default_rng(9), n, {"natural": 0.5}), done=False)
    return store


# ---- selection ----------------------------------------------------------------------------------------------

def test_variants_baselines_and_seen_sets(tmp_path):
    store = paper_store(tmp_path, extra=True)
    chosen, pool = select(load_frame(tmp_path), Selection())
    (setting,) = build_settings(store, chosen, pool, Selection())
    assert [v.label for v in setting.variants] == ["AT (PGD)", "GAIRAT (PGD)", "LRAT (CW)"]
    assert all(v.seeds == (0, 1) for v in setting.variants)
    assert setting.variant("AT (PGD)").seen == {"pgd20"} and setting.variant("LRAT (CW)").seen == {"cw20"}
    assert setting.attacks == ("natural", "pgd20", "cw20", "aa", "worst") and setting.n_points == 400


def test_configs_that_differ_beyond_the_seed_are_separate_rows(tmp_path):
    store = Store(tmp_path)
    flags = {"natural": [True, False], "pgd20": [True, False]}
    for lam in (-1.0, 0.0):
        add_run(store, "gairat", "pgd", 0, flags, params={"lam": lam})
    add_run(store, "gairat", "pgd", 1, flags, params={"lam": 0.0})
    chosen, pool = select(load_frame(tmp_path), Selection())
    (setting,) = build_settings(store, chosen, pool, Selection())
    assert sorted(v.label for v in setting.variants) == ["GAIRAT (PGD) [p_lam=-1.0]", "GAIRAT (PGD) [p_lam=0.0]"]
    assert setting.variant("GAIRAT (PGD) [p_lam=0.0]").seeds == (0, 1)


def test_rows_on_different_test_points_never_pair(tmp_path):
    store = Store(tmp_path)
    flags = {"natural": [True, False], "pgd20": [False, False]}
    add_run(store, "at", "pgd", 0, flags, row_extra={"points_sha": "aaaa"})
    add_run(store, "gairat", "pgd", 0, flags, row_extra={"points_sha": "bbbb"})
    chosen, pool = select(load_frame(tmp_path), Selection())
    settings = build_settings(store, chosen, pool, Selection())
    assert [[v.label for v in s.variants] for s in settings] == [["AT (PGD)"], ["GAIRAT (PGD)"]]
    assert settings[0].slug.endswith("-aaaa")


def test_baseline_is_added_as_reference_when_outside_the_selection(tmp_path):
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
def test_bad_selection_is_refused_with_exit_2_and_writes_nothing(tmp_path, args, message):
    paper_store(tmp_path / "results", seeds=(0,), n=20, extra=True)
    out = tmp_path / "reports"
    result = CliRunner().invoke(main, ["report", "--results", str(tmp_path / "results"), "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_irat_alias_selects_gairat(tmp_path):
    paper_store(tmp_path, seeds=(0,), n=20)
    chosen, _ = select(load_frame(tmp_path), parse_selection(methods="irat"))
    assert set(chosen.method) == {"gairat"}


def test_empty_store_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["report", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "No finished runs in" in result.output
    assert not (tmp_path / "o").exists()
