"""Where every cell stands: finished, running (its lock is held), failed (with the reason), pending, stale
(rows computed on another checkpoint file than the one stored) or damaged (a stored file missing, truncated,
garbled, edited or refused: the file and the reason, and what repairs it). The verdict is
bench/store_integrity.py's, the one `bench report` and `bench export` use: a stale or damaged run is never
"finished".

Read from the store and the lock files only, never written (a read-only store works); torch is never
imported, so `bench status` is instant. A lock is probed by trying it without waiting, through a read-only
descriptor (no lock file is created or truncated): flock locks die with their process, so a crashed run never
looks "running". The runner waits a moment for a lock before calling a cell busy, so a probe never makes it skip.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from bench.fingerprint import mixed_fingerprints_line, recorded_fingerprint
from bench.health import health_text, run_health
from bench.store_integrity import run_integrity
from bench.store import DONE, FAILED, TRAINED, Store, StoreError, eval_group, read_json

if TYPE_CHECKING:
    from bench.config.matrix_cells import Cell

State = Literal["finished", "running", "failed", "pending", "stale", "damaged"]
STATES: tuple[State, ...] = ("finished", "running", "failed", "pending", "stale", "damaged")
SHOWN_WHEN_ANY = ("stale",)  # counted in the text only when a cell is in it; damaged always (issue 25)
ATTEMPTS = "attempts.json"  # one entry per time a process took the cell's lock to work on it


def lock_held(store: Store, run_id: str) -> bool:
    """Whether a process holds the cell's lock. Never creates, truncates or writes the lock file (a read-only
    store works): a shared flock through a read-only descriptor conflicts with the holder's exclusive one."""
    path = store.lock_path(run_id)
    if not path.exists():  # never create a lock file just to look
        return False
    try:
        import fcntl
    except ImportError:  # not POSIX: filelock's own probe
        return _filelock_held(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # unreadable: nobody we can see holds it
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # a file system without flock on read-only descriptors: filelock's probe
        return _filelock_held(path)
    finally:
        os.close(fd)  # closing releases our shared lock
    return False


def _filelock_held(path: Path) -> bool:
    from filelock import FileLock, Timeout

    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False


def suite_files(cell: Cell, n: int) -> list[tuple[str, str]]:
    """(group, attack) of every eval file a cell's suite stores on `n` test points, its worst rows included."""
    eps = cell.train.eps if cell.eval.eps is None else cell.eval.eps
    return [(eval_group(c, cell.eval.threat_model, eps, n, cell.eval.precision), a)
            for c in cell.eval.checkpoints for a in (*cell.eval.attacks, "worst")]


def is_complete(store: Store, cell: Cell, n_test: int | None = None,
                problems: list[StoreError] | tuple[StoreError, ...] | None = None) -> bool:
    """DONE written, every (checkpoint, attack) of the cell's eval suite stored, and no integrity problem
    (`problems`: run_integrity's, when already known). `n_test`: the number of test points once the data
    is loaded (the whole test set, or fewer than --test-subset asked for)."""
    run_id = cell.train.run_id
    if not store.has(run_id, DONE):
        return False
    if (run_integrity(store, run_id).problems if problems is None else problems):
        return False
    n = n_test if n_test is not None else cell.eval.test_subset
    if n is None:  # the whole test set, size unknown without the data: trust DONE
        return True
    return all(store.eval_path(run_id, g, a).exists() for g, a in suite_files(cell, n) if a != "worst")


IDENTITY = ("method", "train_attack", "dataset", "model", "seed", "epochs")  # of the training config


@dataclass(frozen=True)
class CellStatus:
    run_id: str
    state: State
    label: str
    detail: str = ""
    epochs_done: int = 0
    attempts: int = 0
    identity: tuple = (None,) * len(IDENTITY)  # IDENTITY's values; None where the config is unreadable
    health: dict[str, str] = field(default_factory=dict)  # bench/health.py's flags: {flag: reason}
    code_fingerprint: str | None = None  # of the code that trained it (config.json); None: not recorded

    def to_dict(self) -> dict:
        """The cell as `bench status --json` and `bench run --dry-run --json` print it (docs/cli.md)."""
        return {"run_id": self.run_id, "state": self.state, **dict(zip(IDENTITY, self.identity)),
                "epochs_done": self.epochs_done, "attempts": self.attempts, "detail": self.detail,
                "label": self.label, "health": self.health, "code_fingerprint": self.code_fingerprint}


def _config(store: Store, run_id: str) -> dict | None:
    """The stored config; None when it is missing or damaged."""
    try:
        return store.config(run_id)
    except StoreError:
        return None


def _identity(config: dict | None) -> tuple:
    """IDENTITY's values from the stored config; all None when it is missing or damaged."""
    try:
        return tuple(config["train"][k] for k in IDENTITY)
    except (KeyError, TypeError):
        return (None,) * len(IDENTITY)


def _failure(run_dir: Path) -> tuple[str, dict[str, str]]:
    """(reason, health flags) of a FAILED marker: the runner records a non-finite loss as a flag there."""
    try:
        info = read_json(run_dir / FAILED)
        health = info.get("health")
        return str(info.get("reason", "?")), dict(health) if isinstance(health, dict) else {}
    except (StoreError, AttributeError):
        return "FAILED marker unreadable", {}


def _label(run_id: str, identity: tuple) -> str:
    if identity[0] is None:
        return f"? [{run_id}]"
    method, train_attack, dataset, model, seed, _ = identity
    return f"{method}/{train_attack} {dataset}/{model} seed {seed} [{run_id}]"


def _read_list(path: Path) -> list:
    try:
        value = read_json(path)
    except StoreError:
        return []
    return value if isinstance(value, list) else []


def cell_status(store: Store, run_id: str, cell: Cell | None = None, n_test: int | None = None) -> CellStatus:
    """The state of one cell; with `cell` given, DONE counts as finished only if its whole suite is stored."""
    run_dir = store.run_dir(run_id)
    config = _config(store, run_id) if (run_dir / "config.json").exists() else None
    identity = tuple(getattr(cell.train, k) for k in IDENTITY) if cell is not None else _identity(config)
    label = cell.label if cell is not None else _label(run_id, identity)
    epochs = cell.train.epochs if cell is not None else None
    history = _read_list(run_dir / "history.json")
    attempts = len(_read_list(run_dir / ATTEMPTS))
    done = len(history)
    progress = f"epoch {done}/{epochs or '?'}" if not store.has(run_id, TRAINED) else "trained"
    health = run_health(history, identity[2], identity[5])

    def status(state: State, detail: str, more_health: dict[str, str] | None = None) -> CellStatus:
        flags = {**health, **(more_health or {})}
        text = "; ".join(t for t in (detail, health_text(flags)) if t)
        return CellStatus(run_id, state, label, text, done, attempts, identity, flags, recorded_fingerprint(config))

    if lock_held(store, run_id):
        return status("running", f"lock held; {progress}")
    verdict = run_integrity(store, run_id)
    why = "; ".join(t for t in (verdict.detail(run_dir), verdict.repair) if t)
    if verdict.verdict in ("damaged", "stale") and (verdict.verdict == "damaged" or store.has(run_id, DONE)):
        return status(verdict.verdict, why)
    if verdict.usable and (cell is None or is_complete(store, cell, n_test, verdict.problems)):
        return status("finished", "")
    if store.has(run_id, FAILED):
        return status("failed", *_failure(run_dir))
    if store.has(run_id, DONE):
        return status("pending", "evaluation of new attacks missing")
    if not run_dir.exists():
        return status("pending", "not started")
    return status("pending", f"interrupted ({progress}, evaluation incomplete)" if progress == "trained"
                  else f"interrupted ({progress})")


def statuses(store: Store, cells: list[Cell] | None = None) -> list[CellStatus]:
    """The matrix's cells in order (when given), then every other run in the store."""
    listed = [cell_status(store, c.train.run_id, c) for c in cells or []]
    seen = {s.run_id for s in listed}
    return listed + [cell_status(store, r) for r in store.run_ids() if r not in seen]


def format_table(rows: list[CellStatus], extra: dict[str, list[str]] | None = None) -> list[str]:
    """Plain-text lines, one per cell: state, label, then any extra columns, then the detail."""
    extra = extra or {}
    out = []
    for i, s in enumerate(rows):
        cols = [f"{s.state:<9}", s.label] + [values[i] for values in extra.values()]
        out.append("  ".join(cols) + (f"  {s.detail}" if s.detail else ""))
    return out


def tally(rows: list[CellStatus]) -> dict[str, int]:
    """{state: number of cells in it}, every state of STATES (0 included), in that order."""
    return {st: sum(r.state == st for r in rows) for st in STATES}


def totals(rows: list[CellStatus]) -> dict[str, int]:
    """{"cells": N, then tally's states}: the totals `--json` prints where the text prints `counts`."""
    return {"cells": len(rows), **tally(rows)}


def fingerprint_line(rows: list[CellStatus]) -> str:
    """'runs trained by N different code fingerprints: abc (k runs), ...' when the rows mix them, else ''. Runs
    without a recorded one (not started, trained before it was recorded, external models) are not counted."""
    return mixed_fingerprints_line(r.code_fingerprint for r in rows)


def counts(rows: list[CellStatus]) -> str:
    """'N finished, N running, N failed, N pending', ', N stale' when any is, ', N damaged'."""
    return ", ".join(f"{n} {st}" for st, n in tally(rows).items() if st not in SHOWN_WHEN_ANY or n)
