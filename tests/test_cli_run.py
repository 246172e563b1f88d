"""`bench run` refuses bad input before any work: exit code 2, a message naming the problem, and no new file in
the results directory (which already holds one file, so "nothing written" is checked, not "not created").
Also: --dry-run writes nothing; executor flags need their executor."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from support import BASE, tree

from bench.cli import main







def refused(results: Path, *args: str, env: dict | None = None) -> str:
    before = tree(results)
    res = CliRunner().invoke(main, [*BASE, "--results", str(results), *args], env=env)
    assert res.exit_code == 2, res.output
    assert tree(results) == before  # nothing written: no locks, no run directories
    return res.output


@pytest.mark.parametrize("args,message", [
    (["--methods", "irta"], "Unknown method 'irta'. Did you mean: irat?"),
    (["--train-attack", "pdg"], "Unknown training attack 'pdg'. Did you mean: pgd?"),
    (["--train-attack", "saa+"], "Malformed training attack 'saa+'"),
    (["--dataset", "fashoin-mnist"], "Unknown dataset 'fashoin-mnist'. Did you mean: fashion-mnist?"),
    (["--dataset", "synthetic,cifar1O"], "Unknown dataset 'cifar1O'. Did you mean: cifar10?"),
    (["--model", "resnet81"], "Unknown model 'resnet81'. Did you mean: resnet18?"),
    (["--eval-attacks", "natural,pgd"], "Unknown eval attack 'pgd'. Did you mean: pgd20?"),
    (["--eps", "8"], "larger than 1, but inputs are in [0, 1]. Did you mean 8/255?"),
    (["--eps=-0.1"], "Epsilon must be >= 0, got -0.1"),
    (["--eval-eps", "2"], "Epsilon 2 is larger than 1"),
    (["--methods", "at", "--train-attack", "saa+cw"], "Method 'at' takes one training attack; 'saa+cw' combines 2"),
    (["--methods", "gairat", "--train-attack", "fgsm"], "Method 'gairat' needs the attack's step count kappa"),
    (["--methods", "gairat", "--attack-steps", "1"], "Method 'gairat' needs at least 2 attack steps"),
    (["--methods", "gairat", "--attack-steps", "1", "--dry-run"], "divide by floor(K/2)"),
    (["--methods", "at,mail", "--train-attack", "pgd,saa+cw"], "Method 'at' takes one training attack"),
    (["--methods", "gairat", "--method-param", "gairat.lamb=0"], "Did you mean: lam?"),
    (["--methods", "at", "--method-param", "gairat.lam=0"], "names method 'gairat', which is not in --methods"),
    (["--seeds", "0,x"], "--seeds takes comma-separated integers"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--checkpoints", "best,epoch2"], "Checkpoint 'epoch2' is after the last epoch (1)"),
    (["--checkpoints", "bets"], "Unknown checkpoint 'bets'. Did you mean: best?"),
    (["--gpus-per-cell", "1"], "need --executor ray"),
    (["--executor", "ray", "--cpus-per-cell", "-1"], "--cpus-per-cell must be >= 0"),
])
def test_bad_input_exits_2_names_the_problem_and_writes_nothing(results, args, message):
    assert message in refused(results, *args)


def test_a_missing_dataset_says_how_to_get_it(results, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known (test: offline)")

    monkeypatch.setattr(socket, "getaddrinfo", offline)  # no download, online or not
    empty = tmp_path / "empty"
    empty.mkdir()
    out = refused(results, "--dataset", "mnist", env={"BENCH_DATA_DIR": str(empty), "XDG_CACHE_HOME": str(empty)})
    assert "Dataset 'mnist' not found" in out and "put the idx files in $BENCH_DATA_DIR/mnist/" in out


def test_an_unwritable_results_directory_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    res = CliRunner().invoke(main, [*BASE, "--results", str(blocker / "results")])
    assert res.exit_code == 2 and "cannot be created" in res.output and "is not a directory" in res.output
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc, where nobody can create files")
def test_a_results_directory_no_one_can_write_is_refused():
    # os.access says "writable" to root; the probe actually tries.
    res = CliRunner().invoke(main, [*BASE, "--results", "/proc/lrat-bench-results"])
    assert res.exit_code == 2 and "is not writable" in res.output


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_results_directory_is_refused(results):
    results.chmod(0o555)
    try:
        assert "is not writable" in refused(results)
    finally:
        results.chmod(0o755)


def test_a_malformed_matrix_file_is_refused_with_its_line(results, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[matrix]\nmethods = [\"at\"\nseeds = [0]\n")
    out = refused(results, "--config", str(bad))
    assert f"{bad}:" in out and "malformed TOML" in out and "line 3" in out


def test_dry_run_writes_nothing_even_to_a_new_directory(tmp_path):
    target = tmp_path / "new-results"
    res = CliRunner().invoke(main, [*BASE, "--results", str(target), "--methods", "at,lrat", "--seeds", "0,1",
                                    "--dry-run"])
    assert res.exit_code == 0, res.output
    assert not target.exists()
    lines = res.output.strip().splitlines()
    assert len(lines) == 6 and all(line.split()[0] == "pending" for line in lines[:4])
    assert "4 cells: 0 finished, 0 running, 0 failed, 4 pending" in lines[4] and "--speed-json" in lines[5]
