"""The Ray executor on a local instance (2 CPUs) runs a 2x2 tiny matrix and writes the same rows as the local
executor: same run ids, same per-example robust flags, same weights. One worker is SIGKILLed mid-cell (a
pre-emption): Ray retries the task and the cell still ends identical. Needs the `ray` extra."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from click.testing import CliRunner

from bench.cli import main
from bench.execution.status import ATTEMPTS
from bench.store import Store

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'lrat-bench[ray]'")

MATRIX = ["run", "--dataset", "synthetic", "--methods", "at,mail", "--seeds", "0,1", "--epochs", "2",
          "--train-subset", "64", "--val-size", "32", "--test-subset", "32", "--batch-size", "32",
          "--attack-steps", "2", "--eval-attacks", "natural,pgd20", "--device", "cpu"]


def kill_first_worker(store: Store, stop: threading.Event, killed: list[int]) -> None:
    """Pre-empt the first cell that starts: SIGKILL the Ray worker named in its attempts record."""
    while not stop.is_set():
        for run_id in store.run_ids():
            path = store.run_dir(run_id) / ATTEMPTS
            try:
                pid = json.loads(path.read_text())[0]["pid"]
            except (OSError, ValueError):
                continue
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.02)


def test_ray_executor_gives_the_rows_of_the_local_one(tmp_path):
    local, remote = Store(tmp_path / "local"), Store(tmp_path / "ray")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray task with one CPU (Ray sets OMP_NUM_THREADS=1)
    try:
        res = CliRunner().invoke(main, [*MATRIX, "--results", str(local.root)])
    finally:
        torch.set_num_threads(n)
    assert res.exit_code == 0, res.output

    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_first_worker, args=(remote, stop, killed))
    killer.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "bench", *MATRIX, "--results", str(remote.root), "--executor",
                               "ray", "--cpus-per-cell", "1", "--gpus-per-cell", "0", "--max-retries", "2"],
                              capture_output=True, text=True, timeout=600,
                              env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
                                   "RAY_USAGE_STATS_ENABLED": "0"})
    finally:
        stop.set()
        killer.join()
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "4 cells: 4 run" in proc.stderr

    def table(store):
        return {(r["run_id"], r["checkpoint"], r["eval_attack"]): (r["accuracy"], r["flags"])
                for r in store.load_rows(with_flags=True)}

    assert len(table(local)) == 4 * 2 * 3
    assert table(remote) == table(local)
    assert remote.run_ids() == local.run_ids()
    for run_id in local.run_ids():
        a = torch.load(local.run_dir(run_id) / "last.pt")
        b = torch.load(remote.run_dir(run_id) / "last.pt")
        assert all(torch.equal(a[k], b[k]) for k in a)

    # The pre-empted cell was retried by Ray in another worker and finished; the others ran once.
    assert len(killed) == 1
    attempts = {r: json.loads((remote.run_dir(r) / ATTEMPTS).read_text()) for r in remote.run_ids()}
    retried = [r for r, a in attempts.items() if len(a) > 1]
    assert len(retried) == 1 and attempts[retried[0]][0]["pid"] == killed[0]
    assert attempts[retried[0]][1]["pid"] != killed[0]
    assert sorted(len(a) for a in attempts.values()) == [1, 1, 1, 2]
