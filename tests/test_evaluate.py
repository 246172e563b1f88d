"""Evaluating stored runs: rows, the per-example worst row, reuse, guards in the rows, `load_run`, the
RobustBench test order on CIFAR, and the `bench eval` command (exit codes, nothing written on bad input)."""
from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner

import bench.evaluation.evaluate
from bench.cli import main
from bench.config import EvalConfig
from bench.data import load_data, to_float
from bench.evaluation.evaluate import evaluate_run, make_row, points_columns, write_worst
from bench.evaluation.guards import ALL_GUARDS, GuardFailure
from bench.store import decode_flags, eval_group, load_run

from support import CFG, N, suite, write_run

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture
def stored(tmp_path, trained_state):
    return write_run(tmp_path / "results", trained_state)


@pytest.fixture(scope="session")
def test_split():
    return load_data("synthetic", val_size=CFG.val_size, train_subset=CFG.train_subset, test_subset=N).test


def stored_flags(store, run_id, group, attack):
    return decode_flags(store.read_eval(run_id, group, attack)["flags"])


def test_rows_worst_and_guards(stored, test_split):
    store, run_id = stored
    rows = evaluate_run(store, run_id, suite("natural", "fgsm", "pgd20"), test_split, torch.device("cpu"))
    assert [r["eval_attack"] for r in rows] == ["natural", "fgsm", "pgd20", "worst"]
    group = eval_group("best", "linf", 0.02, N)
    per = {a: stored_flags(store, run_id, group, a) for a in ("natural", "fgsm", "pgd20")}
    worst = stored_flags(store, run_id, group, "worst")
    assert worst == [all(f[i] for f in per.values()) for i in range(N)]
    assert all(w <= min(f[i] for f in per.values()) for i, w in enumerate(worst))
    acc = {r["eval_attack"]: r["accuracy"] for r in rows}
    assert acc["natural"] > 0.9 and 0.2 < acc["pgd20"] < acc["natural"] and acc["worst"] <= min(acc.values())
    for r in rows:
        assert {f"guard_{g}" for g in ALL_GUARDS} <= set(r), r["eval_attack"]
        assert r["guards_flagged"] == "" and r["guard_eval_mode"] == "ok" and r["guard_logits"] == "ok"
        assert (r["n_examples"], r["test_points"], r["eval_precision"]) == (N, "balanced-subset", "fp32")
        assert r["points_sha"] == points_columns(test_split)["points_sha"]
    assert rows[1]["eval_tf32"] is False and rows[-1]["worst_of"] == "fgsm,natural,pgd20"


def test_stored_rows_are_reused_and_worst_recomputed(stored, test_split, monkeypatch):
    store, run_id = stored
    evaluate_run(store, run_id, suite("natural", "fgsm", "pgd20"), test_split, torch.device("cpu"))
    calls = []
    real = bench.evaluation.evaluate.run_eval_attack
    monkeypatch.setattr(bench.evaluation.evaluate, "run_eval_attack", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    rows = evaluate_run(store, run_id, suite("natural", "pgd20", "cw20"), test_split, torch.device("cpu"))
    assert calls == ["cw20"]
    worst = rows[-1]
    assert worst["worst_of"] == "cw20,fgsm,natural,pgd20"
    group = eval_group("best", "linf", 0.02, N)
    per = [stored_flags(store, run_id, group, a) for a in ("natural", "fgsm", "pgd20", "cw20")]
    assert stored_flags(store, run_id, group, "worst") == [all(f[i] for f in per) for i in range(N)]


def test_eps_zero_gives_natural_through_the_store(stored, test_split):
    store, run_id = stored
    rows = evaluate_run(store, run_id, suite("natural", "fgsm", "pgd20", "cw20", eps=0.0), test_split,
                        torch.device("cpu"))
    assert len({r["n_robust"] for r in rows}) == 1
    group = eval_group("best", "linf", 0.0, N)
    assert len({tuple(stored_flags(store, run_id, group, a)) for a in ("natural", "fgsm", "pgd20", "cw20")}) == 1


def test_load_run_gives_an_eval_model_matching_the_stored_accuracy(stored, test_split):
    store, run_id = stored
    evaluate_run(store, run_id, suite("natural"), test_split, torch.device("cpu"))
    model, config = load_run(store.run_dir(run_id))
    assert config["run_id"] == run_id and config["train"]["model"] == "small-cnn"
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        flags = (model(to_float(test_split.x)).argmax(1) == test_split.y).tolist()
    assert flags == stored_flags(store, run_id, eval_group("best", "linf", 0.02, N), "natural")


def test_train_mode_model_is_refused_and_nothing_is_written(stored, test_split, monkeypatch):
    store, run_id = stored
    model, config = load_run(store.run_dir(run_id))
    monkeypatch.setattr(bench.evaluation.evaluate, "load_run", lambda *a, **k: (model.train(), config))
    with pytest.raises(GuardFailure, match="train mode"):
        evaluate_run(store, run_id, suite("natural", "pgd20"), test_split, torch.device("cpu"))
    assert not store.eval_path(run_id, eval_group("best", "linf", 0.02, N), "natural").parent.exists()


class Softmaxed(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).softmax(1)


def test_a_broken_model_is_flagged_in_its_rows(stored, test_split, monkeypatch):
    store, run_id = stored
    model, config = load_run(store.run_dir(run_id))
    monkeypatch.setattr(bench.evaluation.evaluate, "load_run", lambda *a, **k: (Softmaxed(model).eval(), config))
    rows = evaluate_run(store, run_id, suite("natural", "pgd20"), test_split, torch.device("cpu"))
    for r in rows:
        assert r["guard_logits"].startswith("flag: outputs are probability rows"), r["eval_attack"]
        assert "logits" in r["guards_flagged"].split(",")


def write_rows(store, run_id, group, flags_by, sha=None):
    config = store.config(run_id)
    ecfg = EvalConfig(attacks=tuple(flags_by))
    for attack, f in flags_by.items():
        row = make_row(config, "best", 1, attack, f, 0.02, ecfg, 0.0, [], {},
                       {"points_sha": sha(attack) if sha else "same"})
        store.write_eval(run_id, group, attack, row, f)
    return config, ecfg


def test_suite_guards_are_written_into_every_row(stored):
    store, run_id = stored
    group = eval_group("best", "linf", 0.02, 100)
    n = 100
    flags_by = {"natural": [i < 80 for i in range(n)], "fgsm": [i < 40 for i in range(n)],
                "pgd20": [i < 60 for i in range(n)]}  # PGD-20 above FGSM by 0.20 > tolerance 0.10
    config, ecfg = write_rows(store, run_id, group, flags_by)
    worst = write_worst(store, run_id, group, config, "best", 1, 0.02, ecfg, {})
    assert worst["accuracy"] == 0.40 and worst["guard_monotone"].startswith("flag: possible gradient masking")
    for attack in flags_by:
        row = store.read_eval(run_id, group, attack)["row"]
        assert row["guard_monotone"].startswith("flag") and row["guards_flagged"] == "monotone"
        assert stored_flags(store, run_id, group, attack) == flags_by[attack]  # flags untouched


def test_rows_on_different_points_cannot_be_combined(stored):
    store, run_id = stored
    group = eval_group("best", "linf", 0.02, 4)
    config, ecfg = write_rows(store, run_id, group, {"natural": [True] * 4, "fgsm": [False] * 4}, sha=lambda a: a)
    with pytest.raises(ValueError, match="different test points"):
        write_worst(store, run_id, group, config, "best", 1, 0.02, ecfg, {})


# --- RobustBench protocol -------------------------------------------------------------------------------

def write_cifar(root, name: str, n_test: int = 150):
    """Synthetic files in torchvision's CIFAR python format (real pickles, made-up pixels)."""
    rng = np.random.default_rng(0)
    hundred = name == "cifar100"
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    key = "fine_labels" if hundred else "labels"

    def dump(fname, n):
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: rng.integers(0, 10, n).tolist()}
        with open(folder / fname, "wb") as f:
            pickle.dump(batch, f)
    for fname in (["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]):
        dump(fname, 20)
    dump("test" if hundred else "test_batch", n_test)
    with open(folder / ("meta" if hundred else "batches.meta"), "wb") as f:
        pickle.dump({("fine_label_names" if hundred else "label_names"): [str(i) for i in range(10)]}, f)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_test_points_are_robustbenchs_first_n(tmp_path, monkeypatch, name):
    from bench.evaluation.autoattack_compat import install

    install()
    import robustbench.data

    write_cifar(tmp_path, name)
    # made-up pixels cannot match torchvision's md5 sums: check that the files exist instead
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    loader = robustbench.data.load_cifar10 if name == "cifar10" else robustbench.data.load_cifar100
    for n in (7, 130):
        ours = load_data(name, val_size=10, test_subset=n, data_dir=str(tmp_path)).test
        x_rb, y_rb = loader(n, str(tmp_path))
        assert torch.equal(to_float(ours.x), x_rb) and torch.equal(ours.y, y_rb)
        assert points_columns(ours)["test_points"] == "first-n"


# --- the command ----------------------------------------------------------------------------------------

def invoke(*args):
    return CliRunner().invoke(main, ["eval", *args])


def test_eval_command_adds_attacks_and_l2_without_retraining(stored, test_split):
    store, run_id = stored
    evaluate_run(store, run_id, suite("natural", "pgd20", eps=None), test_split, torch.device("cpu"))
    mtime = (store.run_dir(run_id) / "best.pt").stat().st_mtime_ns
    result = invoke("--results", str(store.root), "--eval-attacks", "natural,fgsm", "--checkpoint", "best")
    assert result.exit_code == 0, result.output
    linf = eval_group("best", "linf", 0.1, N)  # the training eps, and the stored size (no --test-subset)
    assert store.read_eval(run_id, linf, "fgsm")["row"]["eval_eps"] == 0.1
    assert store.read_eval(run_id, linf, "worst")["row"]["worst_of"] == "fgsm,natural,pgd20"
    assert f"{run_id} best linf eps 0.1 n {N}: natural" in result.output and "best/fgsm" in result.output
    result = invoke(run_id[:6], "--results", str(store.root), "--eval-attacks", "natural,fgsm",
                    "--threat-model", "l2", "--checkpoint", "best")
    assert result.exit_code == 0, result.output
    l2 = eval_group("best", "l2", 1.5, N)  # the L2 default for 28x28 data
    assert store.read_eval(run_id, l2, "fgsm")["row"]["threat_model"] == "l2"
    assert (store.run_dir(run_id) / "best.pt").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("args,message", [
    (["nosuchrun"], "Unknown run 'nosuchrun'"),
    (["--eval-attacks", "natural,pgd02"], "Did you mean: pgd20?"),
    (["--eps", "8"], "Did you mean 8/255?"),
    (["--threat-model", "l2", "--eps", "40"], "diameter"),
    (["--checkpoint", "bset"], "Did you mean: best?"),
])
def test_eval_command_refuses_bad_input_and_writes_nothing(stored, args, message):
    store, run_id = stored
    result = invoke("--results", str(store.root), *args)
    assert result.exit_code == 2 and message in result.output
    assert not (store.run_dir(run_id) / "evals").exists()


def test_eval_command_suggests_a_close_run_id(stored):
    store, run_id = stored
    result = invoke(run_id[:-1] + "x", "--results", str(store.root))
    assert result.exit_code == 2 and f"Did you mean: {run_id}?" in result.output


def test_eval_command_exit_code_one_when_a_guard_refuses(stored, monkeypatch):
    store, run_id = stored
    model, config = load_run(store.run_dir(run_id))
    monkeypatch.setattr(bench.evaluation.evaluate, "load_run", lambda *a, **k: (model.train(), config))
    result = invoke("--results", str(store.root), "--eval-attacks", "natural", "--test-subset", "8")
    assert result.exit_code == 1 and "REFUSED" in result.output and "train mode" in result.output


@pytest.mark.parametrize("command", ["eval", "export"])
def test_help_has_an_example(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and f"bench {command}" in result.output


def test_eval_command_leaves_a_run_locked_by_another_process_alone(stored):
    from filelock import FileLock

    store, run_id = stored
    store.lock_path(run_id).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(store.lock_path(run_id)):  # held as `bench run` holds it while it works on the cell
        result = invoke("--results", str(store.root), "--eval-attacks", "natural", "--test-subset", "8")
    assert result.exit_code == 1 and "BUSY" in result.output
    assert not (store.run_dir(run_id) / "evals").exists()


def test_seen_means_the_training_attack_itself_under_its_threat_model_and_budget():
    from bench.evaluation.evaluate import is_seen

    assert is_seen("pgd20", "pgd") and is_seen("cw20", "saa+cw")
    assert not is_seen("aa", "saa+cw")  # related (APGD-T is part of AA), not seen: bench/config/relations.py
    assert not is_seen("cw20", "pgd") and not is_seen("natural", "pgd") and not is_seen("worst", "pgd")
    assert not is_seen("fgsm", "pgd")  # related: same loss, one step
    assert not is_seen("pgd20", "pgd", threat_model="l2")  # training attacks are L-inf
    assert not is_seen("pgd20", "pgd", "linf", eval_eps=0.2, train_eps=0.1)  # a larger budget was never simulated
    assert is_seen("pgd20", "pgd", "linf", eval_eps=0.1, train_eps=0.1)


def test_every_row_records_its_attack_relation(stored, test_split):
    store, run_id = stored
    # evaluated at the training eps (0.1, PGD training): pgd20 seen, fgsm related, the rest unseen
    rows = evaluate_run(store, run_id, suite("natural", "fgsm", "pgd20", eps=0.1), test_split, torch.device("cpu"))
    relation = {r["eval_attack"]: (r["attack_relation"], r["seen"]) for r in rows}
    assert relation == {"natural": ("unseen", False), "fgsm": ("related", False), "pgd20": ("seen", True),
                        "worst": ("unseen", False)}
    # at another budget nothing was simulated
    rows = evaluate_run(store, run_id, suite("pgd20", eps=0.02), test_split, torch.device("cpu"))
    assert rows[0]["attack_relation"] == "unseen" and not rows[0]["seen"]


def test_tf32_evaluation_is_recorded_and_kept_apart_from_fp32(stored, test_split):
    store, run_id = stored
    fp32 = evaluate_run(store, run_id, suite("natural"), test_split, torch.device("cpu"))
    tf32 = evaluate_run(store, run_id, dataclasses.replace(suite("natural"), precision="tf32"), test_split,
                        torch.device("cpu"))
    assert (fp32[0]["eval_precision"], fp32[0]["eval_tf32"]) == ("fp32", False)
    assert (tf32[0]["eval_precision"], tf32[0]["eval_tf32"]) == ("tf32", True)
    assert store.read_eval(run_id, eval_group("best", "linf", 0.02, N, "tf32"), "natural") is not None
    assert store.read_eval(run_id, eval_group("best", "linf", 0.02, N), "natural")["row"]["eval_precision"] == "fp32"
