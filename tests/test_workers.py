"""`bench run --workers N` and `bench eval --workers N`: N worker processes store exactly what one process stores."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.store import Store

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
