"""The data a matrix's cells need, loaded once before any cell starts (a missing dataset is refused with how to
get it, a UsageError, before anything trains) and shared by the cells with equal keys (`data_key`). Outside
bench/config/, which stays torch-free and self-contained: loading data imports torch (bench.data)."""
from __future__ import annotations

from typing import Any

from bench.config.matrix_cells import Cell
from bench.config.preflight import data_key


def load_matrix_data(cells: list[Cell], data_dir: str | None) -> dict[tuple, Any]:
    """{data_key: DataBundle} for every dataset the matrix needs (DatasetNotFound says how to get a missing one)."""
    from bench.data import load_keyed

    out: dict[tuple, Any] = {}
    for cell in cells:
        load_keyed(data_key(cell), data_dir, out)
    return out
