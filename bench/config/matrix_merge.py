"""Merging a matrix file with the command line: defaults < file < the flags the user typed."""
from __future__ import annotations

from typing import Any

from bench.config.matrix_file import MATRIX_PARAMS, MatrixValues
from bench.config.names import UsageError


def defaults_of(command) -> dict[str, Any]:
    """The defaults of a click command's matrix parameters (the one place defaults are written down)."""
    return {p.name: p.default for p in command.params if p.name in MATRIX_PARAMS}


def merge(defaults: dict[str, Any], file_values: dict[str, Any], flags: dict[str, Any]) -> MatrixValues:
    """Defaults < matrix file < flags the user actually gave. Method parameters merge per key. `where` says
    where each value came from, for the checks' messages: the file's "file:line: key 'section.key'" for a value
    of the file; a flag's own name (`origin`) otherwise."""
    merged = MatrixValues({**defaults, **file_values, **flags})
    merged.where = {k: v for k, v in getattr(file_values, "where", {}).items() if k not in flags}
    merged.given = set(file_values) | set(flags)
    merged["method_params"] = (file_values.get("method_params") or {}, flags.get("method_params") or ())
    if "rows" in file_values:
        both = [k for k in ("methods", "train_attack") if k in file_values]
        if both:
            raise UsageError(f"The matrix file gives [matrix] rows and {both[0].replace('train_attack', 'train_attacks')}: "
                             f"rows already name each (method, train attack) pair; keep one of the two.")
        for key in ("methods", "train_attack"):  # typed flags select among the rows; defaults do not
            merged[key] = flags.get(key)
    return merged


def origin(values: dict[str, Any], param: str) -> str:
    """Where a merged value came from, for a message: "m.toml:7: key 'train.val_size'" or "--val-size"."""
    return getattr(values, "where", {}).get(param) or "--" + param.replace("_", "-")
