"""Shared fixtures: a tiny BN model and synthetic batches (units never touch real data or the network), and
synthetic result stores for the report tests (no training: rows made by the evaluator's own `make_row` and
`write_worst`, written with Store.write_eval, DONE marked last). Store helpers are fixtures that return the
helper function (`add_run`, `paper_store`, ...): test files share them through here, never by importing
one another."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from support import CFG, SEEDS, SMALL, TinyNet, invoke

from bench.data import load_data, to_float
from bench.models import build_model
from bench.store import Store


@pytest.fixture
def one_thread():
    """Small-tensor loops stall on thread barriers when the 2 cores are shared: use one thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def linear():
    """A linear model on 4x4 inputs and 8 points labelled by it: AutoAttack's per-iteration cost is the floor."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10)).eval()
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)
    return x, y


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    """The process umask, 022 then 077, set for one test and restored after it (files written must follow it)."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


# ---- synthetic result stores (the report tests) ------------------------------------------------------------

PROV = {"git_commit": "test", "device": "cpu (test)", "created_at": "2026-11-27T00:00:00+00:00"}
REWEIGHTED = ("gairat", "mail", "lrat")
PAPER = {  # LRAT paper, Table 1 (%), the shape our synthetic store mimics
    ("at", "pgd"): {"natural": 83.2, "pgd20": 51.1, "cw20": 50.0, "aa": 46.1},
    ("gairat", "pgd"): {"natural": 79.7, "pgd20": 60.8, "cw20": 38.7, "aa": 32.1},
    ("lrat", "cw"): {"natural": 79.7, "pgd20": 50.0, "cw20": 54.3, "aa": 45.1},
}


def _history(epochs: int, method: str = "at", seed: int = 0) -> list[dict]:
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


def _trained_files(store, run_id: str, checkpoints=("best",), trained: bool = True) -> dict[str, str]:
    """What training leaves for the integrity check (bench/store_integrity.py): a small checkpoint file per name
    (its bytes fixed by the run and the name) and TRAINED; returns {checkpoint: its checkpoint_sha}."""
    import io

    from bench.store import TRAINED, file_sha

    shas = {}
    for ckpt in dict.fromkeys(("best", "last", *checkpoints)):  # TRAINED promises best.pt and last.pt
        buffer = io.BytesIO()
        torch.save({"w": torch.tensor([float(sum(map(ord, run_id + ckpt)))])}, buffer)
        (store.run_dir(run_id) / f"{ckpt}.pt").write_bytes(buffer.getvalue())
        shas[ckpt] = file_sha(store.run_dir(run_id) / f"{ckpt}.pt")
    if trained:
        store.mark(run_id, TRAINED)
    return shas


def _add_run(store, method: str, train_attack: str, seed: int, flags: dict[str, list[bool]], *,
             dataset: str = "synthetic", model: str = "small-cnn", eps: float = 8 / 255, epochs: int = 3,
             params: dict | None = None, checkpoints: tuple[str, ...] = ("best",), done: bool = True,
             hist: list[dict] | None = None, row_extra: dict | None = None) -> str:
    """One finished run with the given per-attack robust flags (the same flags for every checkpoint), its
    checkpoint files and markers as training leaves them (TRAINED only when `done`)."""
    from bench.config import EvalConfig, TrainConfig
    from bench.evaluation.evaluate import make_row, write_worst
    from bench.store import DONE, eval_group, write_json

    cfg = TrainConfig(method=method, train_attack=train_attack, dataset=dataset, model=model, eps=eps,
                      epochs=epochs, seed=seed, method_params=params or {})
    run_id = cfg.run_id
    config = {"run_id": run_id, "train": cfg.to_dict(), "provenance": PROV}
    write_json(store.run_dir(run_id) / "config.json", config)
    write_json(store.run_dir(run_id) / "history.json",
               _history(epochs, method, seed) if hist is None else hist)
    n = len(next(iter(flags.values())))
    ecfg = EvalConfig(attacks=tuple(flags), test_subset=n)
    shas = _trained_files(store, run_id, checkpoints, trained=done)
    for ckpt in checkpoints:
        group = eval_group(ckpt, "linf", eps, n)
        for attack, f in flags.items():
            row = {**make_row(config, ckpt, epochs, attack, list(f), eps, ecfg, 0.1, [], PROV),
                   "checkpoint_sha": shas[ckpt], **(row_extra or {})}
            store.write_eval(run_id, group, attack, row, list(f))
        write_worst(store, run_id, group, config, ckpt, epochs, eps, ecfg, PROV, checkpoint_sha=shas[ckpt])
    if done:
        store.mark(run_id, DONE)
    return run_id


def _random_flags(rng: np.random.Generator, n: int, accs: dict[str, float]) -> dict[str, list[bool]]:
    """Nested flags (robust to a stronger attack implies robust to natural), each attack near its accuracy."""
    u = rng.random(n)
    return {a: (u < acc).tolist() for a, acc in accs.items()}


def _paper_store(root, seeds=(0, 1), n: int = 400, extra: bool = False):
    """AT (PGD), GAIRAT (PGD), LRAT (CW) with the paper's accuracies, a few seeds, `n` test points."""
    from bench.store import Store

    store = Store(root)
    for (method, attack), accs in PAPER.items():
        for seed in seeds:
            rng = np.random.default_rng(1000 * seed + sum(map(ord, method + attack)))  # stable across processes
            _add_run(store, method, attack, seed, _random_flags(rng, n, {a: v / 100 for a, v in accs.items()}))
    if extra:  # a run that is not finished must not show up anywhere
        _add_run(store, "mail", "pgd", 0, _random_flags(np.random.default_rng(9), n, {"natural": 0.5}), done=False)
    return store


@pytest.fixture(scope="session")
def prov() -> dict:
    """The provenance block of every synthetic run."""
    return PROV


@pytest.fixture(scope="session")
def history():
    """history(epochs, method="at", seed=0) -> a plausible per-epoch history (weight statistics for reweighted
    methods after a one-epoch burn-in)."""
    return _history


@pytest.fixture(scope="session")
def trained_files():
    """trained_files(store, run_id, checkpoints=("best",), trained=True) -> {checkpoint: checkpoint_sha}: the
    checkpoint files and TRAINED marker a hand-made finished run needs to pass the integrity check."""
    return _trained_files


@pytest.fixture(scope="session")
def add_run():
    """add_run(store, method, train_attack, seed, flags, *, dataset, model, eps, epochs, params, checkpoints,
    done, hist, row_extra) -> run_id: one finished run with the given per-attack robust flags."""
    return _add_run


@pytest.fixture(scope="session")
def random_flags():
    """random_flags(rng, n, {attack: accuracy}) -> nested per-attack flags near each accuracy."""
    return _random_flags


@pytest.fixture(scope="session")
def paper_store():
    """paper_store(root, seeds=(0, 1), n=400, extra=False) -> Store: AT (PGD), GAIRAT (PGD), LRAT (CW) with the
    LRAT paper's Table 1 accuracies; `extra` adds an unfinished MAIL run that must never show up."""
    return _paper_store


@pytest.fixture(scope="session")
def trained_state():
    """A small-cnn fitted to the synthetic data with plain CE (40 Adam steps): clean accuracy near 1, and
    PGD at eps 0.02 leaves most points robust. Built once; each test gets its own store."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_data("synthetic", val_size=CFG.val_size, train_subset=CFG.train_subset)
    model = build_model("small-cnn", 10, 1, 28)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = to_float(data.train.x), data.train.y
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        i = torch.randint(0, len(y), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A store with two finished in-process SMALL cells (seeds 0 and 1), built once; tests copy it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results = tmp_path_factory.mktemp("finished") / "results"
    res = invoke(*SMALL, *SEEDS, "--results", str(results))
    torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    return results


@pytest.fixture
def store_copy(finished, tmp_path, one_thread) -> Store:
    shutil.copytree(finished, tmp_path / "results")
    return Store(tmp_path / "results")


@pytest.fixture
def results(tmp_path) -> Path:
    """A results directory that already holds a file: a refused command must leave it exactly as it is."""
    root = tmp_path / "results"
    root.mkdir()
    (root / "README").write_text("a results directory that must stay as it is\n")
    return root
