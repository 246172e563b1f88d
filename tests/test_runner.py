"""The runner in-process: failed cells (NaN loss, an exception) are recorded with reason and traceback and never
give rows while the others go on; a locked cell is left alone; a new eval attack re-evaluates without
retraining; interrupted writes are cleaned; the matrix progress counts and its ETA."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner
from filelock import FileLock

import bench.execution.runner as runner_mod
from bench.cli import main
from bench.config import EvalConfig, TrainConfig
from bench.execution.progress import MatrixProgress
from bench.execution.runner import Runner, clean_temp_files
from bench.execution.status import ATTEMPTS, cell_status
from bench.config.matrix_cells import Cell
from bench.store import DONE, FAILED, TRAINED, Store

TINY = ["--dataset", "synthetic", "--methods", "at", "--epochs", "1", "--train-subset", "64", "--val-size", "32",
        "--test-subset", "32", "--batch-size", "32", "--attack-steps", "2", "--eval-attacks", "natural",
        "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cell(seed: int = 0, attacks=("natural",), test_subset: int | None = 32) -> Cell:
    train = TrainConfig(method="at", train_attack="pgd", dataset="synthetic", eps=0.1, attack_steps=2,
                        attack_step_size=0.025, train_subset=64, val_size=32, epochs=1, batch_size=32, seed=seed)
    return Cell(train, EvalConfig(attacks=attacks, test_subset=test_subset))


def test_nan_and_raising_cells_fail_alone_and_exit_1(tmp_path, monkeypatch):
    real_train_run = runner_mod.train_run

    def train_run(cfg, *args, **kwargs):
        if cfg.seed == 1:  # the real loop with an absurd learning rate: the loss becomes NaN in batch 2
            return real_train_run(dataclasses.replace(cfg, lr=1e30), *args, **kwargs)
        if cfg.seed == 2:
            raise RuntimeError("disk on fire")
        return real_train_run(cfg, *args, **kwargs)

    monkeypatch.setattr(runner_mod, "train_run", train_run)
    results = tmp_path / "results"
    res = CliRunner().invoke(main, ["run", *TINY, "--seeds", "0,1,2", "--results", str(results)])
    assert res.exit_code == 1, res.output
    assert "2 failed" in res.output and "NonFiniteLoss: loss is nan" in res.output and "disk on fire" in res.output

    store = Store(results)
    rows = store.load_rows()
    assert {r["seed"] for r in rows} == {0}  # failed cells never give rows
    by_seed = {store.config(r)["train"]["seed"]: r for r in store.run_ids()}
    nan = json.loads((store.run_dir(by_seed[1]) / FAILED).read_text())
    assert nan["reason"].startswith("NonFiniteLoss: loss is nan at epoch 1") and "train_run" in nan["traceback"]
    boom = json.loads((store.run_dir(by_seed[2]) / FAILED).read_text())
    assert boom["reason"] == "RuntimeError: disk on fire" and "Traceback" in boom["traceback"]
    assert not store.has(by_seed[1], DONE) and not store.has(by_seed[2], DONE)

    status = CliRunner().invoke(main, ["status", "--results", str(results)])
    assert status.exit_code == 0
    lines = {line.split()[0] + " " + line.split("seed ")[1][0] for line in status.output.splitlines()
             if " seed " in line and not line.startswith(" ")}  # cell lines, not their evaluations or totals
    assert lines == {"finished 0", "failed 1", "failed 2"}
    assert "disk on fire" in status.output and "3 cells: 1 finished, 0 running, 2 failed, 0 pending" in status.output

    # Fixed: the rerun retries only the failed cells, and a success clears the FAILED record.
    monkeypatch.setattr(runner_mod, "train_run", real_train_run)
    again = CliRunner().invoke(main, ["run", *TINY, "--seeds", "0,1,2", "--results", str(results)])
    assert again.exit_code == 0 and "2 run, 1 already finished" in again.output
    assert not list(results.rglob(FAILED)) and len(store.load_rows()) == 3 * 2 * 2


def test_a_locked_cell_is_left_to_its_owner_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_mod, "LOCK_WAIT_S", 0.1)
    store, cell = Store(tmp_path), tiny_cell()
    lock = FileLock(store.lock_path(cell.train.run_id))
    with lock:
        outcome = Runner(store, torch.device("cpu")).run_cell(cell)
        assert cell_status(store, cell.train.run_id, cell).state == "running"
    assert outcome.status == "busy" and not store.run_dir(cell.train.run_id).exists()


@pytest.mark.parametrize("test_subset", [32, None])  # None: the whole test set, its size known once loaded
def test_a_new_eval_attack_evaluates_without_retraining(tmp_path, test_subset):
    store, cell = Store(tmp_path), tiny_cell(test_subset=test_subset)
    runner = Runner(store, torch.device("cpu"))
    assert runner.run_cell(cell).status == "done"
    assert runner.run_cell(cell).status == "skipped"
    bigger = dataclasses.replace(cell, eval=dataclasses.replace(cell.eval, attacks=("natural", "fgsm")))
    run_id = cell.train.run_id
    state = cell_status(store, run_id, bigger, n_test=test_subset or 512)
    assert (state.state, state.detail) == ("pending", "evaluation of new attacks missing")
    assert runner.run_cell(bigger).status == "done"
    phases = [a["phase"] for a in json.loads((store.run_dir(run_id) / ATTEMPTS).read_text())]
    assert phases == ["train", "evaluate"]
    assert sorted({r["eval_attack"] for r in store.load_rows()}) == ["fgsm", "natural", "worst"]


def test_temporary_files_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "evals" / "g").mkdir(parents=True)
    keep = [tmp_path / "history.json", tmp_path / "evals" / "g" / "natural.json", tmp_path / TRAINED]
    stale = [tmp_path / ".DONE.x1y2.tmp", tmp_path / "evals" / "g" / ".pgd20.json.abc.tmp"]
    for p in keep + stale:
        p.write_text("{}")
    assert clean_temp_files(tmp_path) == 2
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_matrix_progress_counts_and_eta(monkeypatch):
    progress = MatrixProgress(total=5, workers=2)
    assert progress.eta() is None  # nothing ran yet: unknown, not zero
    for label, status, seconds in (("a", "done", 10.0), ("b", "skipped", 0.0), ("c", "failed", 20.0)):
        progress.start(label)
        progress.finish(label, status, seconds)
    progress.start("d")
    # mean of the cells that ran (10 s, 20 s) x 2 cells not finished / 2 workers; the skipped cell costs nothing
    assert progress.eta() == pytest.approx(15.0)
    assert progress.summary() == ("cells: 3/5 processed (1 run, 1 already done, 1 failed, 0 busy elsewhere), "
                                  "1 running, 1 left, ETA 15s")
    progress.close()


def test_an_epoch_checkpoint_is_kept_while_training_and_evaluated_as_its_own_group(tmp_path):
    """--checkpoints epoch1,last on a 2-epoch run: epoch1.pt is the model after epoch 1 (not the last one),
    its rows say checkpoint 'epoch1' and checkpoint_epoch 1; asking later for an epoch never kept is refused."""
    res = CliRunner().invoke(main, ["run", *TINY, "--epochs", "2", "--checkpoints", "epoch1,last",
                                    "--results", str(tmp_path)])
    assert res.exit_code == 0, res.output
    store = Store(tmp_path)
    (run_id,) = store.run_ids()
    run_dir = store.run_dir(run_id)
    assert (run_dir / "epoch1.pt").exists() and not (run_dir / "epoch2.pt").exists()
    first, last = torch.load(run_dir / "epoch1.pt"), torch.load(run_dir / "last.pt")
    assert any(not torch.equal(first[k], last[k]) for k in first)  # epoch 2 trained on
    rows = {r["checkpoint"]: r for r in store.load_rows() if r["eval_attack"] == "natural"}
    assert rows["epoch1"]["checkpoint_epoch"] == 1 and rows["last"]["checkpoint_epoch"] == 2
    res = CliRunner().invoke(main, ["eval", run_id, "--results", str(tmp_path), "--checkpoint", "epoch2",
                                    "--eval-attacks", "natural", "--device", "cpu"])
    assert "has no checkpoint 'epoch2'" in res.output
