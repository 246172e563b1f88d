"""No traceback reaches the user: bad input exits 2 with a message (nothing done), a failure during the work
exits 1 with a message, Ctrl-C exits 130 leaving the store resumable. Cases: undecodable and absurdly nested
TOML, corrupt idx files, --out on a file, read-only folders, a stray folder under runs/, bench speed's counts
and --json, a mistyped results folder or --data-dir, and an offline MNIST lookup that leaves no folder behind."""
from __future__ import annotations

import errno
import gzip
import os
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bench.cli import main

RUN = ["run", "--dataset", "synthetic", "--epochs", "1", "--train-subset", "64", "--val-size", "32",
       "--test-subset", "32", "--eval-attacks", "natural", "--batch-size", "32", "--attack-steps", "2"]


def invoke(*args: str, env: dict | None = None):
    res = CliRunner().invoke(main, list(args), env=env)
    assert "Traceback" not in res.output
    return res, " ".join(res.output.split())


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def store(tmp_path, add_run, random_flags):
    """A results folder with one finished synthetic run (40 test points)."""
    from bench.store import Store

    root = tmp_path / "results"
    add_run(Store(root), "at", "pgd", 0, random_flags(np.random.default_rng(0), 40, {"natural": 0.8}),
            dataset="synthetic")
    return root


# ---- matrix files -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["run", "--dry-run"], ["run"], ["status"]])
def test_a_matrix_file_that_is_not_utf8_names_its_line(tmp_path, command):
    path = tmp_path / "m.toml"
    path.write_bytes(b"[train]\nepochs = 3\n# caf\xe9 in Latin-1\n")
    res, out = invoke(*command, "--config", str(path), "--results", str(tmp_path / "r"))
    assert res.exit_code == 2 and f"{path}:3: not UTF-8 text (byte 0xe9" in out
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", [["run", "--dry-run"], ["status"]])
def test_a_matrix_file_nested_ten_thousand_deep_is_refused(tmp_path, command):
    path = tmp_path / "m.toml"
    path.write_text("[matrix]\nseeds = " + "[" * 10_000 + "]" * 10_000 + "\n")
    res, out = invoke(*command, "--config", str(path), "--results", str(tmp_path / "r"))
    assert res.exit_code == 2 and f"{path}: nested too deeply to read" in out


# ---- data ---------------------------------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray, *, cut: int = 0, magic: bytes = b"\x00\x00\x08") -> None:
    data = magic + bytes([array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape) + array.tobytes()
    data = data[:len(data) - cut]
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


def fashion_dir(root: Path, n: int = 20) -> Path:
    """A well-formed, tiny Fashion-MNIST folder (n training and n test images)."""
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    return folder


def test_a_well_formed_idx_folder_loads(tmp_path):
    from bench.data import _load_idx_dir

    (train_x, train_y), (test_x, _) = _load_idx_dir(fashion_dir(tmp_path))
    assert train_x.shape == (20, 1, 28, 28) and train_y.tolist()[:3] == [0, 1, 2] and len(test_x) == 20


@pytest.mark.parametrize("damage,message", [
    (lambda f: write_idx(f / "train-images-idx3-ubyte", np.zeros((20, 28, 28), np.uint8), cut=100),
     "train-images-idx3-ubyte is corrupt: 15,596 bytes where its header 20x28x28 says 15,696 (truncated)"),
    (lambda f: (f / "train-images-idx3-ubyte").write_bytes(b"<html>404</html>"),
     "train-images-idx3-ubyte is corrupt: no idx header of unsigned bytes"),
    (lambda f: (f / "t10k-labels-idx1-ubyte").write_bytes(b""), "t10k-labels-idx1-ubyte is corrupt: no idx header"),
    (lambda f: write_idx(f / "train-labels-idx1-ubyte", np.zeros(19, np.uint8)),
     "train-labels-idx1-ubyte is corrupt: 19 labels for the 20 images"),
    (lambda f: write_idx(f / "train-labels-idx1-ubyte", np.full(20, 200, np.uint8)),
     "train-labels-idx1-ubyte is corrupt: label 200 where the classes are 0-9"),
    (lambda f: write_idx(f / "train-images-idx3-ubyte", np.zeros((20, 32, 32), np.uint8)),
     "train-images-idx3-ubyte is corrupt: images of 32x32 pixels"),
    (lambda f: write_idx(f / "train-images-idx3-ubyte", np.zeros((20, 784), np.uint8)),
     "train-images-idx3-ubyte is corrupt: 2 dimensions where images have 3"),
    (lambda f: [(f / "t10k-images-idx3-ubyte").unlink(),
                (f / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")],
     "t10k-images-idx3-ubyte.gz is corrupt: cannot be read"),
    (lambda f: [(f / "t10k-images-idx3-ubyte").unlink(),
                write_idx(f / "t10k-images-idx3-ubyte.gz", np.zeros((20, 28, 28), np.uint8), cut=1)],
     "t10k-images-idx3-ubyte.gz is corrupt: 15,695 bytes"),
    (lambda f: (f / "t10k-labels-idx1-ubyte").unlink(), "t10k-labels-idx1-ubyte.gz is corrupt: missing"),
])
def test_corrupt_fashion_mnist_files_are_named_before_any_work(tmp_path, damage, message):
    data = tmp_path / "data"
    damage(fashion_dir(data))
    results = tmp_path / "results"
    res, out = invoke("run", "--dataset", "fashion-mnist", "--data-dir", str(data), "--results", str(results),
                      "--epochs", "1", "--val-size", "4", "--test-subset", "8", "--eval-attacks", "natural")
    assert res.exit_code == 2, out
    assert message in out and "Delete it and fetch it again" in out
    assert not results.exists() or not (results / "runs").exists()


def offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known (test: offline)")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)


def test_a_failed_mnist_lookup_leaves_the_data_folder_as_it_was(tmp_path, monkeypatch):
    offline(monkeypatch)
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    res, out = invoke(*RUN, "--dataset", "mnist", "--data-dir", str(data), "--results", str(tmp_path / "r"),
                      env={"XDG_CACHE_HOME": str(cache), "BENCH_DATA_DIR": None})
    assert res.exit_code == 2 and "Dataset 'mnist' not found" in out
    assert list(data.iterdir()) == []  # no MNIST/raw that a later lookup would take for a dataset folder
    assert not cache.exists()


@pytest.mark.parametrize("command", [RUN, RUN + ["--dry-run"], ["eval"]])
def test_a_missing_data_dir_is_refused(tmp_path, command):
    res, out = invoke(*command, "--data-dir", str(tmp_path / "typo"), "--results", str(tmp_path / "r"))
    assert res.exit_code == 2 and "'--data-dir'" in out and "does not exist" in out
    assert not (tmp_path / "typo").exists() and not (tmp_path / "r").exists()



# ---- output and results folders -------------------------------------------------------------------------------

def test_report_out_on_an_existing_file_is_refused(store, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    res, out = invoke("report", "--results", str(store), "--out", str(target), "--no-pdf")
    assert res.exit_code == 2 and f"--out '{target}' is a file, not a directory" in out
    assert target.read_text() == "keep me"


def test_export_out_on_an_existing_file_is_refused(store, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    run_id = next(p.name for p in (store / "runs").iterdir())
    res, out = invoke("export", run_id, "--results", str(store), "--out", str(target))
    assert res.exit_code == 2 and f"--out '{target}' is a file, not a directory" in out
    assert target.read_text() == "keep me"


def test_export_of_a_stray_folder_is_refused(store, tmp_path):
    (store / "runs" / "notes").mkdir()
    res, out = invoke("export", "notes", "--results", str(store), "--out", str(tmp_path / "x"))
    assert res.exit_code == 2 and "runs/notes is not a run (it has no config.json)" in out
    assert not (tmp_path / "x").exists()


@pytest.fixture
def read_only(monkeypatch):
    """read_only(folder): writes into `folder` fail as on a read-only mount (EROFS). Root writes through
    chmod 555, so the write probe's mkstemp is made to fail there instead; other users get a real chmod."""
    made = []

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            folder.chmod(0o555)
            made.append(folder)
            return
        real = tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve() == folder.resolve():
                raise OSError(errno.EROFS, "Read-only file system", str(folder))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)

    yield make
    for folder in made:
        folder.chmod(0o755)


def test_eval_refuses_a_read_only_results_folder_before_any_work(store, read_only):
    read_only(store)
    before = snapshot(store)
    res, out = invoke("eval", "--results", str(store), "--eval-attacks", "natural,fgsm")
    assert res.exit_code == 2 and f"Results directory '{store}' is not writable" in out
    assert snapshot(store) == before


def test_report_reads_a_read_only_store_but_refuses_a_read_only_out(store, tmp_path, read_only):
    out_dir = tmp_path / "reports"
    out_dir.mkdir()
    read_only(out_dir)
    res, out = invoke("report", "--results", str(store), "--out", str(out_dir), "--no-pdf")
    assert res.exit_code == 2 and f"--out '{out_dir}' is not writable" in out
    assert list(out_dir.iterdir()) == []


def test_eval_refuses_a_test_subset_larger_than_the_test_set(store):
    res, out = invoke("eval", "--results", str(store), "--test-subset", "513")
    assert res.exit_code == 2 and "--test-subset must be at most the size of synthetic's test set (512" in out


@pytest.mark.parametrize("args,message", [
    (["--seed", "-1"], "--seed must lie in [0, 2^32 - 1"),
    (["--seed", str(2**63)], "--seed must lie in [0, 2^32 - 1"),
    (["--threat-model", "l2", "--eps", "100"], "--eps on synthetic (1 x 28 x 28 inputs): L2 epsilon 100 exceeds"),
])
def test_eval_refuses_bad_values_before_any_work(store, args, message):
    before = snapshot(store)
    res, out = invoke("eval", "--results", str(store), *args)
    assert res.exit_code == 2 and message in out
    assert snapshot(store) == before


def test_status_of_a_mistyped_results_folder_exits_2(tmp_path):
    res, out = invoke("status", "--results", str(tmp_path / "typo"))
    assert res.exit_code == 2 and f"No such results folder '{tmp_path / 'typo'}'" in out
    (tmp_path / "empty").mkdir()
    res, out = invoke("status", "--results", str(tmp_path / "empty"))
    assert res.exit_code == 0 and "No runs in" in out  # a folder that exists: nothing has run yet


def test_status_with_a_matrix_lists_its_cells_before_the_first_run(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text("[matrix]\ndatasets = [\"synthetic\"]\nseeds = [0, 1]\n")
    res, out = invoke("status", "--results", str(tmp_path / "new"), "--config", str(path))
    assert res.exit_code == 0 and "2 cells: 0 finished, 0 running, 0 failed, 2 pending" in out
    assert "No results folder" in out and not (tmp_path / "new").exists()


# ---- bench ls METHOD, --json ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,message", [
    ("lrta", "Unknown method 'lrta'. Did you mean: lrat? (choices: "),
    ("gairta", "Unknown method 'gairta'. Did you mean: gairat?"),
    ("pgd", "'pgd' is a training attack, not a method"),
    ("cifar10", "'cifar10' is a dataset, not a method"),
])
def test_ls_of_an_unknown_method_exits_2_with_a_suggestion(name, message):
    for extra in ([], ["--json"]):
        res, out = invoke("ls", name, *extra)
        assert res.exit_code == 2 and message in out and res.stdout == ""


def test_json_without_dry_run_is_refused_before_any_work(tmp_path):
    res, out = invoke(*RUN, "--results", str(tmp_path / "r"), "--json")
    assert res.exit_code == 2 and "--json prints --dry-run's plan" in out
    assert not (tmp_path / "r").exists()


# ---- bench speed ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--steps", "-1"], "--steps must be >= 1, got -1"),
    (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["--eval-points", "0"], "--eval-points must be >= 1, got 0"),
    (["--epoch-images", "-5"], "--epoch-images must be >= 0, got -5"),
])
def test_speed_refuses_counts_that_time_nothing(args, message):
    res, out = invoke("speed", "--device", "cpu", *args)
    assert res.exit_code == 2 and message in out


def test_speed_refuses_a_json_path_it_could_not_write_before_timing(tmp_path):
    res, out = invoke("speed", "--device", "cpu", "--json", str(tmp_path))
    assert res.exit_code == 2 and f"--json '{tmp_path}' is a directory" in out
    res, out = invoke("speed", "--device", "cpu", "--json", str(tmp_path / "no" / "speed.json"))
    assert res.exit_code == 2 and "does not exist" in out


# ---- interruptions and failures during the work ------------------------------------------------------------------

def test_ctrl_c_during_a_run_exits_130_and_leaves_the_cell_resumable(tmp_path, monkeypatch):
    import bench.execution.runner as runner
    from filelock import FileLock

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "train_run", interrupted)
    results = tmp_path / "results"
    res, out = invoke(*RUN, "--results", str(results), "--device", "cpu")
    assert res.exit_code == 130 and "interrupted" in out and "Aborted" not in out
    (run_dir,) = (results / "runs").iterdir()
    assert not (run_dir / "FAILED").exists() and not (run_dir / "DONE").exists()
    lock = FileLock(results / "locks" / f"{run_dir.name}.lock")
    lock.acquire(timeout=0)  # released: the next `bench run` takes the cell and resumes it
    lock.release()
    res, out = invoke("status", "--results", str(results))
    assert res.exit_code == 0 and "1 pending" in out


def test_ctrl_c_in_any_command_exits_130(tmp_path, monkeypatch):
    import bench.cli.status as status_cmd

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(status_cmd, "statuses", interrupted)
    (tmp_path / "r").mkdir()
    res, out = invoke("status", "--results", str(tmp_path / "r"))
    assert res.exit_code == 130 and "interrupted" in out


def test_an_os_error_during_the_work_exits_1_with_its_message(tmp_path, monkeypatch):
    import bench.cli.status as status_cmd

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r" / "x.json"))

    monkeypatch.setattr(status_cmd, "statuses", disk_full)
    (tmp_path / "r").mkdir()
    res, out = invoke("status", "--results", str(tmp_path / "r"))
    assert res.exit_code == 1 and f"Error: No space left on device: {tmp_path / 'r' / 'x.json'}" in out
