"""Run one cell, start to finish, safely next to other processes: lock, train (or resume), evaluate, mark DONE.

- One process per cell: a filelock (flock) at <results>/locks/<run_id>.lock. The lock dies with its process,
  so a crashed or killed run leaves no stale lock. A cell whose lock stays held is "busy" and left to its owner.
- Resume: training from the last finished epoch (train_state.pt), evaluation per stored (checkpoint, attack).
- A cell that raises (or whose loss goes NaN/inf) is recorded as FAILED with reason and traceback, never
  yields result rows; the other cells go on.
- Every time a process works on a cell it appends to <run_dir>/attempts.json (pid, host, phase, start epoch):
  the record of who trained what, read by `bench status` and by the tests that prove nothing ran twice.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from filelock import FileLock, Timeout

from bench.config import checkpoint_epoch_number
from bench.config.catalog import DEFAULTS
from bench.data import DataBundle, load_data
from bench.evaluation.evaluate import evaluate_run
from bench.execution.progress import CellProgress, MatrixProgress
from bench.execution.status import ATTEMPTS, is_complete  # noqa: F401
from bench.config.matrix_cells import Cell
from bench.config.preflight import data_key
from bench.provenance import provenance
from bench.store import DONE, FAILED, TRAINED, Store, read_json, write_json
from bench.training.loop import RuntimeOptions, train_run

log = logging.getLogger(__name__)
Status = Literal["done", "skipped", "failed", "busy"]
# How long to wait for a cell's lock before calling it busy: long enough that `bench status` probing the
# lock never makes a runner skip the cell, short enough that a cell owned by another process costs nothing.
# A module attribute (the tests shorten it); `bench eval` waits as long, read from the same catalog entry.
LOCK_WAIT_S = DEFAULTS.lock_wait_s


@dataclass(frozen=True)
class CellOutcome:
    cell: Cell
    status: Status
    seconds: float
    reason: str = ""


def clean_temp_files(run_dir: Path) -> int:
    """Remove the temporary files of writers killed mid-write (atomic_path's .<name>.<random>.tmp). Only
    called while holding the cell's lock, when no writer can be alive in this directory."""
    stale = list(run_dir.rglob(".*.tmp")) if run_dir.exists() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def record_attempt(run_dir: Path, phase: str, from_epoch: int) -> None:
    path = run_dir / ATTEMPTS
    attempts = read_json(path) if path.exists() else []
    attempts.append({"pid": os.getpid(), "host": socket.gethostname(), "phase": phase, "from_epoch": from_epoch,
                     "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    write_json(path, attempts)


class Runner:
    def __init__(self, store: Store, device: torch.device, data_dir: str | None = None,
                 data: dict[tuple, DataBundle] | None = None, runtime: RuntimeOptions = RuntimeOptions()):
        self.store, self.device, self.data_dir, self.runtime = store, device, data_dir, runtime
        self._data: dict[tuple, DataBundle] = dict(data or {})  # preloaded by the CLI's presence check

    def data_for(self, cell: Cell) -> DataBundle:
        key = data_key(cell)
        if key not in self._data:
            name, val_size, train_subset, test_subset = key
            self._data[key] = load_data(name, val_size=val_size, train_subset=train_subset,
                                        test_subset=test_subset, data_dir=self.data_dir)
        return self._data[key]

    def run_cell(self, cell: Cell, force: bool = False) -> CellOutcome:
        run_id, t0 = cell.train.run_id, time.perf_counter()
        lock = FileLock(self.store.lock_path(run_id))
        try:
            lock.acquire(timeout=LOCK_WAIT_S)
        except Timeout:
            return CellOutcome(cell, "busy", 0.0, "another process holds this cell's lock")
        try:
            data = self.data_for(cell)
            if not force and is_complete(self.store, cell, len(data.test)):
                return CellOutcome(cell, "skipped", 0.0)
            run_dir = self.store.run_dir(run_id)
            if force and run_dir.exists():
                shutil.rmtree(run_dir)
            if clean_temp_files(run_dir):
                log.info("%s: removed temporary files of an interrupted write", cell.label)
            self.store.clear(run_id, FAILED)
            self.store.clear(run_id, DONE)
            trained = self.store.has(run_id, TRAINED)
            record_attempt(run_dir, "evaluate" if trained else "train", len(self.store.history(run_id)))
            if not (run_dir / "config.json").exists():
                write_json(run_dir / "config.json", {"run_id": run_id, "train": cell.train.to_dict(),
                                                     "provenance": provenance(self.device)})
            progress = CellProgress(cell.label, cell.train.epochs)
            try:
                if not trained:
                    keep = tuple(n for c in cell.eval.checkpoints if (n := checkpoint_epoch_number(c)))
                    runtime = dataclasses.replace(self.runtime, keep_epochs=keep)
                    train_run(cell.train, data, run_dir, self.device, progress.callbacks(), runtime)
                    self.store.mark(run_id, TRAINED, {"seconds": time.perf_counter() - t0})
                evaluate_run(self.store, run_id, cell.eval, data.test, self.device, progress.on_attack)
            finally:
                progress.close()
            self.store.mark(run_id, DONE, {"seconds": time.perf_counter() - t0})
            return CellOutcome(cell, "done", time.perf_counter() - t0)
        except Exception as exc:  # a failed cell is recorded and the matrix goes on
            reason = f"{type(exc).__name__}: {exc}"
            log.error("cell %s failed: %s", cell.label, reason)
            write_json(self.store.run_dir(run_id) / FAILED, {"reason": reason, "traceback": traceback.format_exc()})
            return CellOutcome(cell, "failed", time.perf_counter() - t0, reason)
        finally:
            lock.release()

    def run(self, cells: list[Cell], force: bool = False, progress: MatrixProgress | None = None) -> list[CellOutcome]:
        """The cells one after another in this process (the local executor)."""
        progress = progress or MatrixProgress(len(cells))
        outcomes = []
        for cell in cells:
            progress.start(cell.label)
            outcome = self.run_cell(cell, force)
            progress.finish(cell.label, outcome.status, outcome.seconds)
            outcomes.append(outcome)
        progress.close()
        return outcomes
