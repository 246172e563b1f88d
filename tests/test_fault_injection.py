"""What a hostile tester does by hand, on synthetic data: nothing runs that should not, nothing wrong is stored,
a damaged store says where.

- SIGKILL from outside (real `bench` subprocesses, no hooks) at seeded random moments of training, of evaluation
  and of `bench report`; the reruns (the last one as two concurrent processes) leave a store equal, file by file,
  to an uninterrupted run's (timings and dates aside; checkpoints tensor by tensor), and the same report.
- Every kind of truncated or garbled store file (config.json, history.json, an eval result, best.pt,
  train_state.pt): `bench status` says damaged and names the file, `bench report` refuses naming it, `bench eval`
  goes on with the other runs and names it at the end, `bench run` repairs it back to the uninterrupted store.
- A pickle payload planted in every torch file of a run (train_state.pt, best.pt, last.pt, epoch1.pt) is refused
  by status, run, eval, export and load_run with a message naming the file; the payload never runs.
- An evaluation belongs to one exact checkpoint: the issue's interrupted-then-finished run, end to end.
(Two concurrent `bench run`s over a matrix, each cell trained once: tests/test_concurrency.py.)
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bench.cli import main
from bench.execution.status import ATTEMPTS, cell_status
from bench.store import DONE, FAILED, TRAINED, Store, StoreError, file_sha, load_run

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# What differs between two runs of the same cell by design: when, how long, which commit (other work may land).
VOLATILE = {"seconds", "train_seconds", "eval_seconds", "created_at", "started_at", "git_commit"}

# The subprocess cell: epochs of ~1 s and attacks of ~0.3 s, so that every kill lands inside its stage.
KILLED = ["run", "--dataset", "synthetic", "--methods", "at", "--seeds", "0", "--epochs", "3", "--train-subset", "128",
          "--val-size", "32", "--test-subset", "64", "--batch-size", "32", "--attack-steps", "2",
          "--eval-attacks", "natural,pgd20,cw20", "--checkpoints", "best,epoch1", "--device", "cpu"]
# The in-process cells: two seeds; on this data best.pt moves from epoch 1 to epoch 2 (the identity test needs it).
SMALL = ["run", "--dataset", "synthetic", "--methods", "at", "--epochs", "2", "--train-subset", "128",
         "--val-size", "64", "--test-subset", "32", "--batch-size", "8", "--attack-steps", "2", "--eps", "0.02",
         "--lr", "0.1", "--eval-attacks", "natural,pgd20", "--checkpoints", "best,epoch1", "--device", "cpu"]
SEEDS = ["--seeds", "0,1"]


# ---- helpers ------------------------------------------------------------------------------------------------

def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, (list, tuple)):
        return [_strip(v) for v in value]
    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype), tuple(value.shape), value.cpu().contiguous().numpy().tobytes())
    return value


def snapshot(run_dir: Path) -> dict[str, object]:
    """Every stored file of a run, comparable across runs: JSON without VOLATILE keys (markers too), torch
    files as their tensors and values (weights_only=True). attempts.json and set-aside files are left out."""
    out = {}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(run_dir).as_posix()
        if path.name == ATTEMPTS or path.suffix in (".damaged", ".stale"):
            continue
        if path.suffix == ".pt":
            out[rel] = _strip(torch.load(path, map_location="cpu", weights_only=True))
        else:
            out[rel] = _strip(json.loads(path.read_text()))
    return out


def bench(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def appears(root: Path, pattern: str):
    return lambda: bool(list(root.glob(pattern)))


def epochs_stored(root: Path, n: int):
    def ready() -> bool:
        try:
            return any(len(json.loads(p.read_text())) >= n for p in root.glob("runs/*/history.json"))
        except ValueError:  # never: history.json is replaced atomically
            raise AssertionError("a reader saw a half-written history.json") from None
    return ready


def kill_when(proc: subprocess.Popen, ready, delay: float, what: str, timeout: float = 120) -> None:
    """SIGKILL `proc` `delay` seconds after `ready()` first holds; it must die by the signal (not finish)."""
    end = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before {what}: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < end, f"{what} never happened"
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {what} + {delay:.2f}s: {err[-2000:]}"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def only_run(store: Store, seed: int = 0) -> str:
    return next(r for r in store.run_ids() if store.config(r)["train"]["seed"] == seed)


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


# ---- SIGKILL at random moments, then compare with an uninterrupted run ---------------------------------------

def kill_reports(store: Path, out: Path, rng: random.Random, errors: list) -> None:
    """`bench report` SIGKILLed twice while writing (after its first table, after its first figure)."""
    try:
        for pattern, longest in (("*.csv", 0.3), ("*.png", 0.3)):
            kill_when(bench("report", "--results", str(store), "--out", str(out), "--no-pdf"),
                      appears(out, pattern), rng.uniform(0, longest), f"report {pattern}")
    except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
        errors.append(exc)


def test_sigkill_in_training_evaluation_and_report_then_rerun_equals_an_uninterrupted_run(tmp_path, one_thread):
    rng = random.Random(16)  # the kill moments are reproducible (where they land depends on the machine's speed)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert invoke(*KILLED, "--results", str(ref)).exit_code == 0  # uninterrupted, in this process
    ref_dir = Store(ref).run_dir(Store(ref).run_ids()[0])
    expected = snapshot(ref_dir)
    # The report kills run beside the `bench run` kills, on the reference store (read-only for the report).
    errors: list[BaseException] = []
    reports = threading.Thread(target=kill_reports, args=(ref, tmp_path / "cut", random.Random(17), errors))
    reports.start()
    kill_points = [(epochs_stored(killed, 1), 0.5, "epoch 1 stored"),  # killed in epoch 2
                   (epochs_stored(killed, 2), 0.5, "epoch 2 stored"),  # resumed, killed in epoch 3
                   (appears(killed, "runs/*/evals/best-*/natural.json"), 0.3, "best/natural"),  # in best's attacks
                   (appears(killed, "runs/*/evals/epoch1-*/natural.json"), 0.3, "epoch1/natural")]  # epoch1's
    pids = []
    for ready, longest, what in kill_points:
        proc = bench(*KILLED, "--results", str(killed))
        pids.append(proc.pid)
        kill_when(proc, ready, rng.uniform(0, longest), what)
    # The rerun: two processes at once on the half-done store; one finishes the cell, the other skips it.
    final = [bench(*KILLED, "--results", str(killed)) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in final]
    assert [p.returncode for p in final] == [0, 0], [o[1][-2000:] for o in outs]
    reports.join()
    assert not errors, errors

    store = Store(killed)
    (run_id,) = store.run_ids()
    assert snapshot(store.run_dir(run_id)) == expected
    assert not list(killed.rglob("*.tmp")) and not list(killed.rglob(FAILED))
    attempts = json.loads((store.run_dir(run_id) / ATTEMPTS).read_text())
    assert [a["pid"] for a in attempts[:4]] == pids and len(attempts) == 5  # one of the two finished it
    assert [a["phase"] for a in attempts] == ["train", "train", "train", "evaluate", "evaluate"]
    assert [a["from_epoch"] for a in attempts[:3]] == [0, 1, 2]  # resumed each time, never retrained
    assert cell_status(store, run_id).state == "finished"

    # `bench report`, killed twice while writing and then run again, writes what an uninterrupted report writes.
    for out in ("whole", "cut"):
        res = invoke("report", "--results", str(ref), "--out", str(tmp_path / out), "--no-pdf")
        assert res.exit_code == 0, res.output
    texts = sorted(p.name for p in (tmp_path / "whole").iterdir() if p.suffix in (".csv", ".md", ".tex"))
    assert texts == sorted(p.name for p in (tmp_path / "cut").iterdir() if p.suffix in (".csv", ".md", ".tex"))
    for name in texts:
        assert (tmp_path / "cut" / name).read_text() == (tmp_path / "whole" / name).read_text(), name
    assert snapshot(ref_dir) == expected  # the reports wrote nothing into the store


# ---- damaged store files ------------------------------------------------------------------------------------

def damage(path: Path, mode: str) -> None:
    data = path.read_bytes()
    if mode == "truncated":
        path.write_bytes(data[:len(data) // 2])
    else:  # garbled: 16 bytes in the middle inverted (invalid UTF-8 in JSON, a failing CRC or zip record in .pt)
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 16]) + data[mid + 16:])


FILES = ["config.json", "history.json", "evals/best-*/natural.json", "best.pt", "train_state.pt"]


@pytest.mark.parametrize("mode", ["truncated", "garbled"])
@pytest.mark.parametrize("name", FILES)
def test_a_damaged_file_is_named_by_status_and_report_and_repaired_by_run(store_copy, name, mode):
    store = store_copy
    run_id = only_run(store, seed=1)
    run_dir = store.run_dir(run_id)
    before = snapshot(run_dir)
    (target,) = run_dir.glob(name)
    rel = target.relative_to(run_dir).as_posix()
    damage(target, mode)

    state = cell_status(store, run_id)
    assert state.state == "damaged" and state.detail.startswith(rel), state
    shown = invoke("status", "--results", str(store.root))
    line = next(line for line in shown.output.splitlines() if run_id in line)
    assert line.startswith("damaged ") and f"[{run_id}]  {rel}: " in line, shown.output  # label "?" if config.json
    assert "1 finished, 0 running, 0 failed, 0 pending, 1 damaged" in shown.output
    if target.suffix == ".json":  # what the report reads: it refuses, naming the file (exit 1, no traceback)
        report = invoke("report", "--results", str(store.root), "--out", str(store.root.parent / "rep"), "--no-pdf")
        assert report.exit_code == 1 and f"damaged store file {target}" in report.output, report.output

    repaired = invoke(*SMALL, *SEEDS, "--results", str(store.root))
    assert repaired.exit_code == 0 and "1 run, 1 already finished" in repaired.output, repaired.output
    assert cell_status(store, run_id).state == "finished"
    assert snapshot(run_dir) == before  # as the uninterrupted run left it (retrained bit for bit where needed)
    assert target.with_name(target.name + ".damaged").exists()  # kept for inspection, invisible to the store


def test_eval_goes_on_past_a_damaged_run_and_names_it_at_the_end(store_copy):
    store = store_copy
    good, bad = only_run(store, 0), only_run(store, 1)
    damage(store.run_dir(bad) / "best.pt", "truncated")
    res = invoke("eval", "--results", str(store.root), "--eval-attacks", "natural,fgsm", "--checkpoint", "best",
                 "--device", "cpu")
    assert res.exit_code == 1, res.output
    assert f"damaged: run {bad}: {store.run_dir(bad) / 'best.pt'}: " in res.output
    assert f"{good} best linf" in res.output  # the healthy run was evaluated
    assert store.read_eval(good, next((store.run_dir(good) / "evals").glob("best-*")).name, "fgsm") is not None
    assert not list((store.run_dir(bad) / "evals").glob("*/fgsm.json"))


# ---- planted pickle payloads --------------------------------------------------------------------------------

class Payload:
    """Unpickling this runs `exec(code)`: what a hostile writer of a shared results folder would plant."""

    def __init__(self, marker: Path):
        self.code = f"open({str(marker)!r}, 'w').write('pwned')"

    def __reduce__(self):
        return (exec, (self.code,))


def plant(path: Path, marker: Path) -> None:
    torch.save({"weight": torch.zeros(3), "payload": Payload(marker)}, path)


@pytest.mark.parametrize("name", ["best.pt", "last.pt", "epoch1.pt", "train_state.pt"])
def test_a_planted_payload_is_refused_with_the_file_named_and_never_runs(store_copy, tmp_path, name):
    store, marker = store_copy, tmp_path / "PWNED"
    run_id = only_run(store, 0)
    run_dir = store.run_dir(run_id)
    target = run_dir / name
    plant(target, marker)
    if name == "train_state.pt":  # an interrupted cell: the next `bench run` would resume from it
        store.clear(run_id, DONE)
        store.clear(run_id, TRAINED)

    state = cell_status(store, run_id)
    assert state.state == "damaged" and state.detail.startswith(f"{name}: refused: it asks to import builtins.exec")
    if name != "train_state.pt":
        ckpt = name[:-3]
        with pytest.raises(StoreError, match="refused") as err:
            load_run(run_dir, ckpt)
        assert err.value.path == target and err.value.kind == "unsafe"
        res = invoke("eval", run_id, "--results", str(store.root), "--eval-attacks", "natural", "--checkpoint", ckpt,
                     "--device", "cpu")
        assert res.exit_code == 1 and f"damaged: run {run_id}: {target}: refused" in res.output, res.output
        if name == "best.pt":  # export needs stored natural and aa rows: a stand-in aa row
            group = next((run_dir / "evals").glob("best-*"))
            record = json.loads((group / "natural.json").read_text())
            record["row"]["eval_attack"] = "aa"
            (group / "aa.json").write_text(json.dumps(record))
            res = invoke("export", run_id, "--results", str(store.root), "--out", str(tmp_path / "export"))
            assert res.exit_code == 1 and f"refused store file {target}" in res.output, res.output
            assert not (tmp_path / "export" / "model.pt").exists()
    res = invoke(*SMALL, "--seeds", "0", "--results", str(store.root))
    assert res.exit_code == 1 and f"StoreError: {target}: refused" in res.output, res.output
    failed = json.loads((run_dir / FAILED).read_text())["reason"]
    assert str(target) in failed and "builtins.exec" in failed
    assert target.exists()  # never silently replaced: a person looks at it
    assert not marker.exists()  # the payload never ran


def test_payload_is_refused_by_torch_itself_too(tmp_path):
    """Without our pre-check: the load is weights_only=True, so torch refuses it (StoreError, kind unsafe)."""
    from bench.store import load_torch

    marker = tmp_path / "PWNED"
    plant(tmp_path / "x.pt", marker)
    with pytest.raises(StoreError, match="refused by the weights-only load") as err:
        load_torch(tmp_path / "x.pt")
    assert err.value.kind == "unsafe" and not marker.exists()


# ---- an evaluation belongs to one exact checkpoint ----------------------------------------------------------

def test_rows_of_an_interrupted_runs_best_are_not_reused_once_training_finishes(finished, tmp_path, one_thread):
    """The issue's scenario: a run interrupted after epoch 1 has best.pt but no TRAINED. `bench eval` refuses
    its best (exit 2) but evaluates its kept epoch1; rows an older version stored from the epoch-1 best.pt (one
    without checkpoint_sha, one with) are not reused when `bench run` finishes training and best.pt moves."""
    from bench.config import EvalConfig
    from bench.data import load_data
    from bench.evaluation.evaluate import evaluate_run
    import bench.execution.progress as progress

    results = tmp_path / "results"
    real = progress.CellProgress.callbacks

    def stop_after_epoch_1(self):
        cb = real(self)
        on_epoch = cb.on_epoch

        def hook(entry):
            on_epoch(entry)
            if entry["epoch"] == 1:
                raise KeyboardInterrupt  # as Ctrl-C: neither DONE nor FAILED
        cb.on_epoch = hook
        return cb

    progress.CellProgress.callbacks = stop_after_epoch_1
    try:
        invoke(*SMALL, "--seeds", "0", "--results", str(results))
    finally:
        progress.CellProgress.callbacks = real
    store = Store(results)
    (run_id,) = store.run_ids()
    run_dir = store.run_dir(run_id)
    assert not store.has(run_id, TRAINED) and (run_dir / "best.pt").exists()
    early = file_sha(run_dir / "best.pt")

    res = invoke("eval", run_id, "--results", str(results), "--eval-attacks", "natural", "--device", "cpu")
    assert res.exit_code == 2 and "has not finished training (no TRAINED marker)" in res.output, res.output
    assert not (run_dir / "evals").exists()  # nothing stored
    res = invoke("eval", run_id, "--results", str(results), "--eval-attacks", "natural", "--checkpoint", "epoch1",
                 "--test-subset", "32", "--device", "cpu")
    assert res.exit_code == 0, res.output
    (epoch1_row,) = [r for r in Store(results).iter_evals(run_id) if r["eval_attack"] == "natural"]
    assert epoch1_row["checkpoint_sha"] == file_sha(run_dir / "epoch1.pt")

    # What the old `bench eval` stored from the epoch-1 best.pt: pgd20 with its sha, natural from before the column.
    store.mark(run_id, TRAINED)
    data = load_data("synthetic", val_size=64, train_subset=128, test_subset=32)
    evaluate_run(store, run_id, EvalConfig(attacks=("natural", "pgd20"), test_subset=32, checkpoints=("best",)),
                 data.test, torch.device("cpu"))
    store.clear(run_id, TRAINED)
    group = next((run_dir / "evals").glob("best-*"))
    legacy = json.loads((group / "natural.json").read_text())
    del legacy["row"]["checkpoint_sha"]
    legacy["row"]["created_at"] = "2000-01-01T00:00:00+00:00"  # written before training went on
    (group / "natural.json").write_text(json.dumps(legacy))
    assert json.loads((group / "pgd20.json").read_text())["row"]["checkpoint_sha"] == early

    res = invoke(*SMALL, "--seeds", "0", "--results", str(results))
    assert res.exit_code == 0, res.output
    final = file_sha(run_dir / "best.pt")
    assert final != early  # training moved best.pt (epoch 2 beat epoch 1 on this data)
    rows = {(r["checkpoint"], r["eval_attack"]): r for r in store.iter_evals(run_id)}
    assert all(r["checkpoint_sha"] == final for (c, _), r in rows.items() if c == "best")
    assert rows[("epoch1", "natural")]["checkpoint_sha"] == epoch1_row["checkpoint_sha"]
    # ... and equal to an uninterrupted run's rows, flag for flag
    uninterrupted = Store(finished)
    ref = {(r["checkpoint"], r["eval_attack"]): r for r in uninterrupted.iter_evals(run_id)}
    assert {k: _strip(v) for k, v in rows.items()} == {k: _strip(v) for k, v in ref.items()}
    assert cell_status(store, run_id).state == "finished"


def test_a_swapped_checkpoint_makes_its_rows_stale_and_run_evaluates_them_again(store_copy):
    """best.pt replaced by another (valid) model: status no longer calls the cell finished, and `bench run`
    evaluates its rows again on the file that is there (retraining nothing)."""
    store = store_copy
    run_id, other = only_run(store, 0), only_run(store, 1)
    shutil.copyfile(store.run_dir(other) / "best.pt", store.run_dir(run_id) / "best.pt")
    swapped = file_sha(store.run_dir(run_id) / "best.pt")
    state = cell_status(store, run_id)
    assert state.state == "pending" and state.detail.startswith("stale evaluation evals/best-"), state
    assert "computed on another best.pt" in state.detail
    res = invoke(*SMALL, *SEEDS, "--results", str(store.root))
    assert res.exit_code == 0 and "1 run, 1 already finished" in res.output, res.output
    assert all(r["checkpoint_sha"] == swapped for r in store.iter_evals(run_id) if r["checkpoint"] == "best")
    phases = [a["phase"] for a in json.loads((store.run_dir(run_id) / ATTEMPTS).read_text())]
    assert phases == ["train", "evaluate"] and cell_status(store, run_id).state == "finished"


def test_a_train_state_of_the_older_format_still_resumes_under_weights_only(tmp_path):
    """Train states written before RNG states were plain tensors hold numpy's state: exactly those numpy
    globals are allowed for train_state.pt (and only there), so an interrupted run from before resumes."""
    import numpy as np

    from bench.store import check_torch_file
    from bench.training.loop import _rng_state, _set_rng_state, load_train_state

    np.random.seed(3)
    old = {"model": {}, "optimizer": {}, "scheduler": {}, "epoch": 1, "history": [], "best": 0.5,
           "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}}
    torch.save(old, tmp_path / "train_state.pt")
    torch.save(old, tmp_path / "best.pt")
    assert check_torch_file(tmp_path / "train_state.pt") is None
    assert check_torch_file(tmp_path / "best.pt").kind == "unsafe"  # numpy is no checkpoint's business
    expected = np.random.rand(3)
    _set_rng_state(load_train_state(tmp_path / "train_state.pt")["rng"])
    assert np.array_equal(np.random.rand(3), expected)
    state = _rng_state()  # the current format: tensors and lists only
    torch.save(state, tmp_path / "plain.pt")
    assert check_torch_file(tmp_path / "plain.pt") is None
    a = (random.random(), np.random.rand(), torch.rand(1))
    _set_rng_state(torch.load(tmp_path / "plain.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1)) == a
