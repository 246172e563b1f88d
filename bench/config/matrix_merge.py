"""Merging a matrix file with the command line: defaults < file < the flags the user typed."""
from __future__ import annotations

from typing import Any

from bench.config.matrix_file import MATRIX_PARAMS
from bench.config.names import UsageError


def defaults_of(command) -> dict[str, Any]:
    """The defaults of a click command's matrix parameters (the one place defaults are written down)."""
    return {p.name: p.default for p in command.params if p.name in MATRIX_PARAMS}


def merge(defaults: dict[str, Any], file_values: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Defaults < matrix file < flags the user actually gave. Method parameters merge per key."""
    merged = {**defaults, **file_values, **flags}
    merged["method_params"] = (file_values.get("method_params") or {}, flags.get("method_params") or ())
    if "rows" in file_values:
        both = [k for k in ("methods", "train_attack") if k in file_values]
        if both:
            raise UsageError(f"The matrix file gives [matrix] rows and {both[0].replace('train_attack', 'train_attacks')}: "
                             f"rows already name each (method, train attack) pair; keep one of the two.")
        for key in ("methods", "train_attack"):  # typed flags select among the rows; defaults do not
            merged[key] = flags.get(key)
    return merged
