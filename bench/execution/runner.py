"""Run one cell, start to finish, safely next to other processes: lock, train (or resume), evaluate, mark DONE.

- One process per cell: a filelock (flock) at <results>/locks/<run_id>.lock. The lock dies with its process,
  so a crashed or killed run leaves no stale lock. A cell whose lock stays held is "busy" and left to its owner.
- Resume: training from the last finished epoch (train_state.pt), evaluation per stored (checkpoint, attack).
- A cell that raises (or whose loss goes NaN/inf) is recorded as FAILED with reason and traceback, never
  yields result rows; the other cells go on.
- Every time a process works on a cell it appends to <run_dir>/attempts.json (pid, host, phase, start epoch;
  phase "train" only when an epoch is left to train from the train state): the record of who trained what, read
  by `bench status` and by the tests that prove nothing ran twice.
- A damaged store is repaired, not skipped (`repair_run`, under the lock, before any work): a damaged eval
  result is evaluated again, a damaged config.json rewritten, a damaged history.json rebuilt from the train
  state, a damaged checkpoint or train state trained again from scratch. Damaged files are set aside as
  <name>.damaged. A torch file a weights-only load refuses (a planted payload) is never loaded nor replaced:
  the cell fails, naming it. Before DONE every stored row is checked against its checkpoint's SHA-256.
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
from bench.data import DataBundle, load_keyed
from bench.evaluation.evaluate import drop_mismatched_rows, evaluate_run
from bench.execution.progress import CellProgress, MatrixProgress
from bench.execution.status import ATTEMPTS, is_complete, suite_files  # noqa: F401
from bench.fingerprint import code_fingerprint
from bench.config.matrix_cells import Cell
from bench.config.preflight import data_key
from bench.provenance import provenance
from bench.store import DONE, FAILED, TRAINED, Store, StoreError, inspect_run, read_json, set_aside, write_json
from bench.training.loop import NonFiniteLoss, RuntimeOptions, load_train_state, train_run

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
    attempts = read_json(path) if path.exists() else []  # repair_run set a damaged one aside
    attempts.append({"pid": os.getpid(), "host": socket.gethostname(), "phase": phase, "from_epoch": from_epoch,
                     "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    write_json(path, attempts)


def resume_epoch(store: Store, run_id: str) -> int:
    """The epoch training resumes from: train_state.pt's (what train_run resumes from, and rebuilds a repaired
    history.json from), else the number of epochs in history.json."""
    path = store.run_dir(run_id) / "train_state.pt"
    if path.exists():
        try:
            return int(load_train_state(path)["epoch"])
        except (StoreError, TypeError, ValueError):  # train_run names the file when it fails on it
            pass
    return len(store.history(run_id))


TRAIN_OUTPUTS = ("train_state.pt", "history.json", "best.pt", "last.pt")  # plus epoch<N>.pt


def repair_run(store: Store, run_id: str, problems: list[StoreError] | None = None) -> list[str]:
    """Make a run's damaged files redoable (see the module docstring); returns one line per repair. Raises the
    StoreError of an unsafe torch file instead (never loaded, never replaced). Call it holding the lock."""
    run_dir = store.run_dir(run_id)
    problems = inspect_run(store, run_id, deep=True) if problems is None else problems
    unsafe = [p for p in problems if p.kind == "unsafe"]
    if unsafe:
        raise unsafe[0]
    done, retrain = [], False
    for p in problems:
        if p.kind == "stale":  # the evaluation re-evaluates (or sets aside) rows of another checkpoint
            continue
        if p.path.exists():
            set_aside(p.path, "damaged")
        rel = p.path.relative_to(run_dir) if p.path.is_relative_to(run_dir) else p.path
        if p.path.suffix == ".pt":
            retrain = True
            done.append(f"{rel}: {p.reason}: training again from scratch")
        elif p.path.name == "history.json":
            store.clear(run_id, TRAINED)  # train_run resumes from train_state.pt and rewrites history.json
            done.append(f"{rel}: {p.reason}: rebuilt from the train state")
        elif p.path.parent.parent.name == "evals":
            worst = p.path.with_name("worst.json")
            if worst.exists() and p.path != worst:  # derived from the damaged row
                set_aside(worst, "stale")
            done.append(f"{rel}: {p.reason}: evaluated again")
        else:
            done.append(f"{rel}: {p.reason}: written again")
    if retrain:
        for path in [run_dir / n for n in TRAIN_OUTPUTS] + sorted(run_dir.glob("epoch*.pt")):
            path.unlink(missing_ok=True)
        store.clear(run_id, TRAINED)
    if done:
        store.clear(run_id, DONE)
    return done


class Runner:
    def __init__(self, store: Store, device: torch.device, data_dir: str | None = None,
                 data: dict[tuple, DataBundle] | None = None, runtime: RuntimeOptions = RuntimeOptions()):
        self.store, self.device, self.data_dir, self.runtime = store, device, data_dir, runtime
        self._data: dict[tuple, DataBundle] = dict(data or {})  # preloaded by the CLI's presence check

    def data_for(self, cell: Cell) -> DataBundle:
        return load_keyed(data_key(cell), self.data_dir, self._data)

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
            for line in repair_run(self.store, run_id):
                log.warning("%s: damaged store file %s", cell.label, line)
            try:
                self._work(cell, data, t0)
            except StoreError as exc:  # damage only a load finds (e.g. a whole zip that is not a state dict)
                if exc.kind != "damaged" or not exc.path.is_relative_to(run_dir):
                    raise
                for line in repair_run(self.store, run_id, [exc]):
                    log.warning("%s: damaged store file %s", cell.label, line)
                self._work(cell, data, t0)
            suite = [list(f) for f in suite_files(cell, len(data.test))]  # what `bench run` redoes if it goes
            self.store.mark(run_id, DONE, {"seconds": time.perf_counter() - t0, "suite": suite})
            return CellOutcome(cell, "done", time.perf_counter() - t0)
        except Exception as exc:  # a failed cell is recorded and the matrix goes on
            reason = f"{type(exc).__name__}: {exc}"
            log.error("cell %s failed: %s", cell.label, reason)
            health = {"health": exc.health} if isinstance(exc, NonFiniteLoss) else {}  # `bench status` shows it
            write_json(self.store.run_dir(run_id) / FAILED,
                       {"reason": reason, "traceback": traceback.format_exc(), **health})
            return CellOutcome(cell, "failed", time.perf_counter() - t0, reason)
        finally:
            lock.release()

    def _work(self, cell: Cell, data: DataBundle, t0: float) -> None:
        """Train what is missing, evaluate what is missing, check every row against its checkpoint."""
        run_id, run_dir = cell.train.run_id, self.store.run_dir(cell.train.run_id)
        self.store.clear(run_id, FAILED)
        self.store.clear(run_id, DONE)
        trained = self.store.has(run_id, TRAINED)
        start = len(self.store.history(run_id)) if trained else resume_epoch(self.store, run_id)
        # "train" only when an epoch is left to train: a repaired history.json is rebuilt, not retrained
        record_attempt(run_dir, "train" if not trained and start < cell.train.epochs else "evaluate", start)
        if not (run_dir / "config.json").exists():  # the fingerprint of the code about to train the weights
            prov = {**provenance(self.device), "code_fingerprint": code_fingerprint()}
            write_json(run_dir / "config.json", {"run_id": run_id, "train": cell.train.to_dict(), "provenance": prov})
        progress = CellProgress(cell.label, cell.train.epochs)
        try:
            if not trained:
                keep = tuple(n for c in cell.eval.checkpoints if (n := checkpoint_epoch_number(c)))
                runtime = dataclasses.replace(self.runtime, keep_epochs=keep)
                train_run(cell.train, data, run_dir, self.device, progress.callbacks(), runtime)
                self.store.mark(run_id, TRAINED, {"seconds": time.perf_counter() - t0})
            evaluate_run(self.store, run_id, cell.eval, data.test, self.device, progress.on_attack)
            drop_mismatched_rows(self.store, run_id)
        finally:
            progress.close()

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
