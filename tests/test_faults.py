"""Fault injection in real subprocesses: SIGKILL during training, during a checkpoint write, during evaluation,
during an eval-result write and during the final DONE write; each rerun resumes, and at the end the store holds
every cell exactly once, complete, while the report never saw a partial cell. Plus resume equivalence: a run
killed after epoch 1 and resumed ends with the same weights as an uninterrupted one (CPU, one thread)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from bench.execution.status import ATTEMPTS, statuses
from bench.store import FAILED, Store

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MATRIX = ["run", "--dataset", "synthetic", "--methods", "at,lsat", "--train-attack", "pgd", "--seeds", "0",
          "--epochs", "2", "--train-subset", "64", "--val-size", "32", "--test-subset", "32", "--batch-size", "32",
          "--attack-steps", "2", "--eval-attacks", "natural,pgd20", "--device", "cpu"]
ROWS_PER_CELL = 2 * 3  # checkpoints best, last x (natural, pgd20, worst)

# Runs `bench run` after arming one kill point; KILL names it. The process SIGKILLs itself: no cleanup runs.
DRIVER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    KILL, TARGET = os.environ.get("KILL", ""), "lsat/"
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    if KILL == "train":  # in the middle of epoch 2 of the lsat cell
        import bench.execution.progress as P
        orig = P.CellProgress._on_batch
        def on_batch(self, epoch, batch, n, loss):
            if self.label.startswith(TARGET) and epoch == 1 and batch == 1:
                die()
            orig(self, epoch, batch, n, loss)
        P.CellProgress._on_batch = on_batch
    if KILL == "eval":  # the third eval attack of the cell: two results stored, two missing
        import bench.evaluation.evaluate as E
        orig_attack, calls = E.run_eval_attack, []
        def attack(*a, **k):
            calls.append(1)
            if len(calls) == 3:
                die()
            return orig_attack(*a, **k)
        E.run_eval_attack = attack
    if KILL.startswith("write:"):  # after the temporary file is complete, before the rename
        target, real_replace = KILL.split(":", 1)[1], os.replace
        def in_target_cell(dst):
            configs = [p / "config.json" for p in Path(dst).parents if (p / "config.json").exists()]
            return bool(configs) and '"method": "lsat"' in configs[0].read_text()
        def replace(src, dst, *a, **k):
            if Path(dst).name == target and in_target_cell(dst):
                die()
            return real_replace(src, dst, *a, **k)
        os.replace = replace
    from bench.cli import main
    main(sys.argv[1:])
""")


def bench_run(tmp_path: Path, results: Path, kill: str = "") -> subprocess.CompletedProcess:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    return subprocess.run([sys.executable, str(script), *MATRIX, "--results", str(results)], env={**ENV, "KILL": kill},
                          capture_output=True, text=True, timeout=300)


def attempts(store: Store, run_id: str) -> list[dict]:
    import json
    return json.loads((store.run_dir(run_id) / ATTEMPTS).read_text())


def test_sigkill_at_every_stage_loses_no_cell_and_shows_no_partial_cell(tmp_path):
    results = tmp_path / "results"
    store = Store(results)
    kills = ["train", "write:train_state.pt", "eval", "write:pgd20.json", "write:DONE"]
    for kill in kills:
        proc = bench_run(tmp_path, results, kill)
        assert proc.returncode == -signal.SIGKILL, (kill, proc.returncode, proc.stderr[-2000:])
        rows = store.load_rows()
        # The report sees the first cell (finished before any kill) whole, and nothing of the killed cell.
        assert {r["method"] for r in rows} == {"at"}, kill
        assert len(rows) == ROWS_PER_CELL, kill
    final = bench_run(tmp_path, results)
    assert final.returncode == 0, final.stderr[-3000:]

    rows = store.load_rows()
    keys = [(r["run_id"], r["checkpoint"], r["eval_attack"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * ROWS_PER_CELL  # every cell exactly once, complete
    assert {r["method"] for r in rows} == {"at", "lsat"}
    assert [s.state for s in statuses(store)] == ["finished", "finished"]
    assert not list(results.rglob("*.tmp")) and not list(results.rglob(FAILED))  # nothing half-written left

    by_method = {r["method"]: r["run_id"] for r in rows}
    assert len(attempts(store, by_method["at"])) == 1  # the finished cell was never redone
    lsat = attempts(store, by_method["lsat"])
    # train from 0, killed in epoch 2; resume from 1, killed writing epoch 2's checkpoint; resume from 1 again,
    # trained, killed in eval; then evaluation only: killed writing a result, killed writing DONE, finished.
    assert [(a["phase"], a["from_epoch"]) for a in lsat] == [("train", 0), ("train", 1), ("train", 1),
                                                            ("evaluate", 2), ("evaluate", 2), ("evaluate", 2)]


RESUME = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from bench.config import TrainConfig
    from bench.data import load_data
    from bench.training.loop import Callbacks, train_run
    run_dir, kill_after = Path(sys.argv[1]), int(sys.argv[2])
    cfg = TrainConfig(method="gairat", train_attack="pgd", dataset="synthetic", model="small-cnn", eps=0.1,
                      attack_steps=3, attack_step_size=0.03, train_subset=64, val_size=32, epochs=2,
                      batch_size=16, lr=0.05, augment=True, seed=7, method_params={"lam": -1.0, "burn_in": 0.0})
    data = load_data("synthetic", val_size=32, train_subset=64)
    def on_epoch(entry):
        print("epoch", entry["epoch"], flush=True)
        if entry["epoch"] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    train_run(cfg, data, run_dir, torch.device("cpu"), Callbacks(on_epoch=on_epoch))
""")


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    script = tmp_path / "resume.py"
    script.write_text(RESUME)

    def start(run_dir: Path, kill_after: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), str(run_dir), str(kill_after)], env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    procs = [start(whole, 0), start(killed, 1)]  # side by side: two cores
    outs = [p.communicate(timeout=300) for p in procs]
    assert procs[0].returncode == 0, outs[0][1][-2000:]
    assert procs[1].returncode == -signal.SIGKILL and outs[1][0].split() == ["epoch", "1"]
    assert not (killed / "last.pt").exists()
    resumed = start(killed, 0)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert out.split() == ["epoch", "2"]  # it resumed: epoch 1 was not trained again

    for name in ("last.pt", "best.pt"):
        a, b = torch.load(whole / name), torch.load(killed / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    sa = torch.load(whole / "train_state.pt", weights_only=True)
    sb = torch.load(killed / "train_state.pt", weights_only=True)
    for k, v in sa["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], sb["optimizer"]["state"][k]["momentum_buffer"])
    assert sa["scheduler"] == sb["scheduler"]
    drop = ("seconds", "train_seconds")
    assert [{k: v for k, v in h.items() if k not in drop} for h in sa["history"]] == \
        [{k: v for k, v in h.items() if k not in drop} for h in sb["history"]]
