"""Checks of a planned run that need the outside world (the results and output folders), made before anything
is written, and the key under which cells share their data. Torch-free and importing nothing outside
bench/config/ (tests/test_layout.py): loading the data is bench.execution.matrix_data's."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench.config.matrix_cells import Cell
from bench.config.names import UsageError


def check_results_dir(path: str | Path) -> None:
    """Refuse a results directory that cannot be created or written, without leaving anything behind."""
    check_writable_dir(path, "Results directory")


def check_writable_dir(path: str | Path, what: str) -> None:
    """Refuse a directory (`what` names it: "Results directory", "--out") that cannot be created or written,
    without leaving anything behind: probe with a temporary file in the deepest existing directory (os.access
    says yes to root on read-only trees)."""
    p = Path(path).absolute()
    if p.exists() and not p.is_dir():
        raise UsageError(f"{what} '{path}' is a file, not a directory.")
    probe = next((q for q in (p, *p.parents) if q.exists()), None)
    if probe is None or not probe.is_dir():
        raise UsageError(f"{what} '{path}' cannot be created: '{probe}' is not a directory.")
    _probe_write(probe, f"{what} '{path}' is not writable")


def check_writable_file(path: str | Path, what: str) -> None:
    """Refuse an output file (`what` names its flag) that is a directory or whose folder is missing or
    read-only, before the work whose result it is to hold."""
    p = Path(path).absolute()
    if p.is_dir():
        raise UsageError(f"{what} '{path}' is a directory; give a file name, e.g. {Path(path, 'speed.json')}.")
    if not p.parent.is_dir():
        raise UsageError(f"{what} '{path}': folder '{p.parent}' does not exist.")
    _probe_write(p.parent, f"{what} '{path}' cannot be written")


def _probe_write(folder: Path, message: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=".bench-write-probe.", dir=folder)
    except OSError as exc:
        raise UsageError(f"{message} ({exc.strerror or exc} in {folder}).") from None
    os.close(fd)
    os.unlink(tmp)


def data_key(cell: Cell) -> tuple:
    """Cells with equal keys share one loaded DataBundle."""
    t = cell.train
    return (t.dataset, t.val_size, t.train_subset, cell.eval.test_subset)

