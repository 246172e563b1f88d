"""An evaluation belongs to one exact checkpoint: rows record the checkpoint file's hash and are reused only on
that file (the interrupted-then-finished run end to end, a swapped checkpoint, an older train state)."""
from __future__ import annotations

import json
import random
import shutil

import torch
from support import SEEDS, SMALL, _strip, invoke, only_run

from bench.execution.status import ATTEMPTS, cell_status
from bench.store import TRAINED, Store, file_sha

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
    assert state.state == "stale" and state.detail.startswith("evals/best-"), state
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
