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
(Two concurrent `bench run`s over a matrix, each cell trained once: tests/test_concurrency.py; an evaluation
belongs to one exact checkpoint: tests/test_checkpoint_identity.py.)
"""
from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest
import torch

from support import KILLED, SEEDS, SMALL, appears, bench, epochs_stored, invoke, kill_when, only_run, snapshot

from bench.execution.status import ATTEMPTS, cell_status
from bench.store import DONE, FAILED, TRAINED, Store, StoreError, load_run

# ---- SIGKILL at random moments, then compare with an uninterrupted run ---------------------------------------

def kill_reports(store: Path, out: Path, rng: random.Random, errors: list) -> None:
    """`bench report` SIGKILLed twice while writing (after its first table, after its first figure)."""
    try:
        for pattern, longest in (("*.csv", 0.3), ("*.png", 0.15)):  # an idle machine: 0.5 s of figures after the first
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
    # Each kill lands inside the step it aims at on any machine: its delay is under half that step's time in the
    # uninterrupted run (an idle 2-core machine trains an epoch here in 0.12 s and runs PGD-20 in 0.06 s).
    epoch_s = min(e["seconds"] for e in json.loads((ref_dir / "history.json").read_text()))
    attack_s = min(json.loads(p.read_text())["row"]["eval_seconds"] for p in ref_dir.glob("evals/*/pgd20.json"))
    # The report kills run beside the `bench run` kills, on the reference store (read-only for the report).
    errors: list[BaseException] = []
    reports = threading.Thread(target=kill_reports, args=(ref, tmp_path / "cut", random.Random(17), errors))
    reports.start()
    kill_points = [(epochs_stored(killed, 1), epoch_s / 2, "epoch 1 stored"),  # killed in epoch 2
                   (epochs_stored(killed, 2), epoch_s / 2, "epoch 2 stored"),  # resumed, killed in epoch 3
                   (appears(killed, "runs/*/evals/best-*/natural.json"), attack_s / 2, "best/natural"),  # in PGD-20
                   (appears(killed, "runs/*/evals/epoch1-*/natural.json"), attack_s / 2, "epoch1/natural")]  # epoch1's
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


