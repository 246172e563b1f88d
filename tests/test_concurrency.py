"""Two `bench run` processes on one results directory: each cell trained exactly once, nothing corrupt. And the
lock is an flock: held while its process lives, gone the moment the process is SIGKILLed (no stale lock)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from click.testing import CliRunner

from bench.cli import main
from bench.execution.status import ATTEMPTS, cell_status, lock_held, statuses
from bench.store import Store, write_json

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY = ["run", "--dataset", "synthetic", "--methods", "at", "--epochs", "1", "--train-subset", "64",
        "--val-size", "32", "--test-subset", "32", "--batch-size", "32", "--attack-steps", "2",
        "--eval-attacks", "natural,pgd20", "--device", "cpu"]


def test_two_processes_on_an_overlapping_matrix_train_each_cell_once(tmp_path):
    results = tmp_path / "results"
    # Opposite orders over shared seeds 1 and 2: the two processes meet in the middle.
    procs = [subprocess.Popen([sys.executable, "-m", "bench", *TINY, "--seeds", seeds, "--results", str(results)],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seeds in ("0,1,2", "3,2,1")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]

    store = Store(results)
    assert len(store.run_ids()) == 4
    for run_id in store.run_ids():
        attempts = json.loads((store.run_dir(run_id) / ATTEMPTS).read_text())
        assert [a["phase"] for a in attempts] == ["train"], (run_id, attempts)  # one process, once
    assert [s.state for s in statuses(store)] == ["finished"] * 4
    rows = store.load_rows(with_flags=True)
    keys = [(r["run_id"], r["checkpoint"], r["eval_attack"]) for r in rows]
    assert len(keys) == len(set(keys)) == 4 * 2 * 3
    assert all(len(r["flags"]) == 32 for r in rows)  # every result file whole and readable
    assert not list(results.rglob("*.tmp"))
    # Between them, the two processes ran each cell once: 'run' counts add up to the 4 distinct cells.
    ran = [int(o[1].rsplit(" cells: ", 1)[1].split(" run,")[0]) for o in outs]
    assert sum(ran) == 4


HOLDER = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])  # kept referenced: a collected FileLock releases itself
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_sigkilled_owner_leaves_no_stale_lock(tmp_path):
    store = Store(tmp_path)
    run_id = "0123456789ab"
    write_json(store.run_dir(run_id) / "config.json", {"run_id": run_id, "train": {
        "method": "at", "train_attack": "pgd", "dataset": "synthetic", "model": "small-cnn", "seed": 0}})
    path = store.lock_path(run_id)
    path.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock_held(store, run_id)
        assert cell_status(store, run_id).state == "running"
        shown = CliRunner().invoke(main, ["status", "--results", str(tmp_path)])
        first = shown.output.splitlines()[0]
        assert first.split()[0] == "running" and "[0123456789ab]  lock held" in first
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert path.exists()  # the file stays; the lock on it died with the process
    assert not lock_held(store, run_id)
    assert (cell_status(store, run_id).state, cell_status(store, run_id).detail) == ("pending", "interrupted (epoch 0/?)")
