"""The results store: one directory per cell, every file written atomically, a marker written last.

    <root>/runs/<run_id>/config.json        training config + provenance
                         history.json       per-epoch history (loss, val accuracies, weight statistics, s)
                         train_state.pt     per-epoch training state, for resume
                         best.pt, last.pt   model state dicts
                         TRAINED            marker: training finished
                         evals/<checkpoint>-<threat>-eps<eps>-n<N>/<attack>.json   {"row": {...}, "flags": "0110..."}
                         DONE               marker: trained and evaluated; written last
                         FAILED             reason + traceback of a failed attempt (never read as a result)
    <root>/locks/<run_id>.lock              one process per cell at a time

A directory without DONE does not exist for the report, and `bench run` redoes what it lacks. This module
does not import torch (the report reads the store through it); `load_run` imports it lazily.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
DONE, TRAINED, FAILED = "DONE", "TRAINED", "FAILED"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync and rename it over `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def encode_flags(flags) -> str:
    return "".join("1" if bool(f) else "0" for f in flags)


def decode_flags(text: str) -> list[bool]:
    return [c == "1" for c in text]


@lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def eval_group(checkpoint: str, threat_model: str, eps: float, n_eval: int, precision: str = "fp32") -> str:
    """The folder of one evaluation setting; TF32 results get their own (they may differ in the last flags)."""
    return f"{checkpoint}-{threat_model}-eps{eps:.6g}-n{n_eval}" + ("" if precision == "fp32" else f"-{precision}")


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def lock_path(self, run_id: str) -> Path:
        return self.root / "locks" / f"{run_id}.lock"

    def run_ids(self) -> list[str]:
        runs = self.root / "runs"
        return sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.exists() else []

    def has(self, run_id: str, marker: str) -> bool:
        return (self.run_dir(run_id) / marker).exists()

    def mark(self, run_id: str, marker: str, info: dict[str, Any] | None = None) -> None:
        write_json(self.run_dir(run_id) / marker, info or {})

    def clear(self, run_id: str, marker: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir(run_id) / marker).unlink()

    def eval_path(self, run_id: str, group: str, attack: str) -> Path:
        return self.run_dir(run_id) / "evals" / group / f"{attack}.json"

    def read_eval(self, run_id: str, group: str, attack: str) -> dict[str, Any] | None:
        path = self.eval_path(run_id, group, attack)
        return read_json(path) if path.exists() else None

    def write_eval(self, run_id: str, group: str, attack: str, row: dict[str, Any], flags) -> None:
        write_json(self.eval_path(run_id, group, attack), {"row": row, "flags": encode_flags(flags)})

    def config(self, run_id: str) -> dict[str, Any]:
        return read_json(self.run_dir(run_id) / "config.json")

    def history(self, run_id: str) -> list[dict[str, Any]]:
        path = self.run_dir(run_id) / "history.json"
        return read_json(path) if path.exists() else []

    def finished_runs(self) -> list[str]:
        return [r for r in self.run_ids() if self.has(r, DONE)]

    def iter_evals(self, run_id: str, with_flags: bool = True) -> Iterator[dict[str, Any]]:
        """Every stored eval result of a run: the row, plus `flags` (a '0'/'1' string) when asked."""
        evals = self.run_dir(run_id) / "evals"
        for path in sorted(evals.glob("*/*.json")) if evals.exists() else []:
            record = read_json(path)
            row = dict(record["row"])
            if with_flags:
                row["flags"] = record["flags"]
            yield row

    def load_rows(self, with_flags: bool = False) -> list[dict[str, Any]]:
        """Rows of every finished cell (DONE written); unfinished or failed cells are invisible here."""
        return [row for run_id in self.finished_runs() for row in self.iter_evals(run_id, with_flags)]


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu"):
    """(model, config) of a stored run, for other tools (the public Python API).

    `run_dir` is `<results>/runs/<run_id>`; `checkpoint` is "best" (selected on the validation split, never
    the test set) or "last". The model is an `nn.Module` on `device`, in eval mode (every module's `training`
    is False), taking inputs in [0, 1] (no normalisation outside it) and returning logits. `config` is the
    stored config.json: {"run_id", "train": the TrainConfig fields, "provenance"}. Example:

        model, config = load_run("results/runs/3f2a9c1b0d4e")
        logits = model(x)  # x: float (n, C, H, W) in [0, 1]
    """
    import torch

    from bench.data import DATASETS
    from bench.models import build_model

    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json")
    train = config["train"]
    info = DATASETS[train["dataset"]]
    model = build_model(train["model"], info.num_classes, info.in_channels, info.image_size)
    state = torch.load(run_dir / f"{checkpoint}.pt", map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), config


def resolve_run_id(store: Store, text: str) -> str:
    """A stored run id from its full id or a unique prefix; a UsageError naming the closest one otherwise."""
    from bench.config.names import UsageError, suggest

    ids = store.run_ids()
    if text in ids:
        return text
    matches = [r for r in ids if r.startswith(text)] if text else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UsageError(f"Run id prefix '{text}' is ambiguous in {store.root}: {', '.join(matches)}.")
    raise UsageError(f"Unknown run '{text}' in {store.root}.{suggest(text, ids)}"
                     + ("" if ids else " (the store has no runs)"))
