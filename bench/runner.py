"""Expand the matrix into cells and run each one: lock, train (or resume), evaluate, mark DONE.

A cell that raises (or whose loss goes NaN/inf) is recorded as FAILED with its traceback and never yields
result rows; the other cells go on. A cell locked by another process is left to it.
"""
from __future__ import annotations

import itertools
import logging
import shutil
import time
import traceback
from dataclasses import dataclass, replace
from typing import Literal

import torch
from filelock import FileLock, Timeout

from bench.config import EvalConfig, TrainConfig
from bench.data import DataBundle, load_data
from bench.evaluate import evaluate_run
from bench.progress import CellProgress, MatrixProgress
from bench.provenance import provenance
from bench.store import DONE, FAILED, TRAINED, Store, eval_group, write_json
from bench.train import train_run

log = logging.getLogger(__name__)
Status = Literal["done", "skipped", "failed", "busy"]


@dataclass(frozen=True)
class Cell:
    train: TrainConfig
    eval: EvalConfig

    @property
    def label(self) -> str:
        t = self.train
        return f"{t.method}/{t.train_attack} seed {t.seed} [{t.run_id}]"


@dataclass(frozen=True)
class CellOutcome:
    cell: Cell
    status: Status
    seconds: float
    reason: str = ""


def expand(base: TrainConfig, methods: list[tuple[str, dict]], train_attacks: list[str],
           seeds: list[int], eval_cfg: EvalConfig) -> list[Cell]:
    """One cell per (method, train attack, seed). `methods` holds (canonical name, resolved params)."""
    return [Cell(replace(base, method=m, method_params=p, train_attack=a, seed=s), eval_cfg)
            for (m, p), a, s in itertools.product(methods, train_attacks, seeds)]


def is_complete(store: Store, cell: Cell) -> bool:
    run_id = cell.train.run_id
    if not store.has(run_id, DONE):
        return False
    eps = cell.train.eps if cell.eval.eps is None else cell.eval.eps
    n = cell.eval.test_subset  # None: the whole test set, size unknown until loaded
    if n is None:
        return True
    return all(store.eval_path(run_id, eval_group(c, cell.eval.threat_model, eps, n), a).exists()
               for c in cell.eval.checkpoints for a in cell.eval.attacks)


class Runner:
    def __init__(self, store: Store, device: torch.device, data_dir: str | None = None):
        self.store, self.device, self.data_dir = store, device, data_dir
        self._data: dict[tuple, DataBundle] = {}

    def data_for(self, cell: Cell) -> DataBundle:
        t = cell.train
        key = (t.dataset, t.val_size, t.train_subset, cell.eval.test_subset)
        if key not in self._data:
            self._data[key] = load_data(t.dataset, val_size=t.val_size, train_subset=t.train_subset,
                                        test_subset=cell.eval.test_subset, data_dir=self.data_dir)
        return self._data[key]

    def run_cell(self, cell: Cell, force: bool = False) -> CellOutcome:
        run_id, t0 = cell.train.run_id, time.perf_counter()
        lock = FileLock(self.store.lock_path(run_id))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return CellOutcome(cell, "busy", 0.0, "another process holds this cell's lock")
        try:
            if not force and is_complete(self.store, cell):
                return CellOutcome(cell, "skipped", 0.0)
            run_dir = self.store.run_dir(run_id)
            if force and run_dir.exists():
                shutil.rmtree(run_dir)
            self.store.clear(run_id, FAILED)
            self.store.clear(run_id, DONE)
            if not (run_dir / "config.json").exists():
                write_json(run_dir / "config.json", {"run_id": run_id, "train": cell.train.to_dict(),
                                                     "provenance": provenance(self.device)})
            data = self.data_for(cell)
            progress = CellProgress(cell.label, cell.train.epochs)
            try:
                if not self.store.has(run_id, TRAINED):
                    train_run(cell.train, data, run_dir, self.device, progress.callbacks())
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

    def run(self, cells: list[Cell], force: bool = False) -> list[CellOutcome]:
        progress = MatrixProgress(len(cells))
        outcomes = []
        for i, cell in enumerate(cells):
            progress.start(i, cell.label)
            outcome = self.run_cell(cell, force)
            progress.finish(outcome.status, outcome.seconds)
            outcomes.append(outcome)
        return outcomes
