"""`bench run --workers N` and `bench eval --workers N`: N worker processes store exactly what one process stores."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.store import Store
from support import bench

TINY = ["--dataset", "synthetic", "--methods", "at,mail", "--epochs", "1", "--train-subset", "64", "--val-size", "32",
        "--test-subset", "32", "--batch-size", "32", "--attack-steps", "2", "--eval-attacks", "natural,fgsm",
        "--device", "cpu"]


def stored(root) -> dict:
    """Every stored row's flags and accuracy, by (run, attack): what a report reads."""
    rows = Store(root).load_rows(with_flags=True)
    return {(r["run_id"], r["checkpoint"], r["n_eval"], r["eval_attack"]): (r["flags"], r["accuracy"]) for r in rows}


@pytest.mark.usefixtures("one_thread")  # the sequential run on one thread, as each worker has 2 cores / 2
def test_two_workers_store_what_one_process_stores(tmp_path):
    serial = CliRunner().invoke(main, ["run", *TINY, "--results", str(tmp_path / "serial")])
    parallel = CliRunner().invoke(main, ["run", *TINY, "--workers", "2", "--results", str(tmp_path / "parallel")])
    assert serial.exit_code == 0, serial.output
    assert parallel.exit_code == 0, parallel.output
    a, b = stored(tmp_path / "serial"), stored(tmp_path / "parallel")
    assert len(a) == 12 and a == b  # 2 cells x (best, last) x (natural, fgsm, worst), bit-identical flags
    for run_dir in (tmp_path / "parallel" / "runs").iterdir():
        attempts = json.loads((run_dir / "attempts.json").read_text())
        assert len(attempts) == 1  # each cell trained once, by one worker
    # bench eval --workers: a second group (16 points, PGD-20) on both stores, one process vs two
    more = ["--test-subset", "16", "--eval-attacks", "natural,pgd20", "--checkpoint", "best"]
    serial = CliRunner().invoke(main, ["eval", *more, "--results", str(tmp_path / "serial")])
    parallel = CliRunner().invoke(main, ["eval", *more, "--workers", "2", "--results", str(tmp_path / "parallel")])
    assert serial.exit_code == 0 and parallel.exit_code == 0, (serial.output, parallel.output)
    a, b = stored(tmp_path / "serial"), stored(tmp_path / "parallel")
    assert len(a) == 12 + 6 and a == b  # + 2 runs x (natural, pgd20, worst) on the 16 points


def test_workers_is_refused_with_ray():
    result = CliRunner().invoke(main, ["run", *TINY, "--executor", "ray", "--workers", "2", "--dry-run"])
    assert result.exit_code == 2 and "--workers is for --executor local" in result.output


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:  # ended meanwhile
            continue
        if int(fields.get("PPid", "0").strip()) == pid:
            found.append(int(status.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_workers_die_with_a_killed_run_and_leave_no_cell_busy(tmp_path):
    """SIGKILL to `bench run --workers 2` mid-training: its workers end within seconds, long before their cells
    would have finished (without the watchdog they train on, holding the cells' locks, and a rerun finds the
    cells busy elsewhere); `bench status` then reports no cell running."""
    long_cells = [*TINY, "--epochs", "200", "--results", str(tmp_path)]
    proc = bench("run", *long_cells, "--workers", "2")
    end = time.monotonic() + 120
    while not list(tmp_path.glob("runs/*/history.json")):  # a worker has finished an epoch
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < end, "no worker started training"
        time.sleep(0.05)
    workers = [c for c in children_of(proc.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(workers) == 2, workers
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    end = time.monotonic() + 15
    while any(Path(f"/proc/{w}").exists() for w in workers):
        assert time.monotonic() < end, "the workers outlived their killed parent"
        time.sleep(0.1)
    histories = [json.loads(p.read_text()) for p in tmp_path.glob("runs/*/history.json")]
    assert histories and all(len(h) < 200 for h in histories)  # killed mid-run, not finished
    status = CliRunner().invoke(main, ["status", "--results", str(tmp_path), "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["totals"]["running"] == 0
