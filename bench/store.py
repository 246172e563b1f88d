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
does not import torch (the report reads the store through it); `load_torch` and `load_run` import it lazily.

Integrity: every read of a stored file either returns what the writer wrote or raises `StoreError(path,
reason)` naming the file (never a bare JSON/zip traceback). `inspect_run` lists a run's damaged files without
importing torch (`bench status`, the runner's skip check); torch files are only ever loaded with
`weights_only=True` (`load_torch`), so a planted pickle payload is refused, never run.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from bench.store_files import (CRC_LIMIT, LEGACY_STATE_GLOBALS, SAFE_GLOBALS, StoreError,  # noqa: F401 (re-exported)
                               atomic_path, check_config, check_eval, check_history, check_torch_file,
                               decode_flags, encode_flags, file_sha, load_torch, read_json, write_json)

SCHEMA_VERSION = 1
DONE, TRAINED, FAILED = "DONE", "TRAINED", "FAILED"


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
        """Write `marker`; DONE also records `evals`, the [group, attack] of every eval file stored (with those
        `info` already lists), so that a file deleted later reads as missing (bench/store_integrity.py)."""
        info = dict(info or {})
        if marker == DONE:
            listed = {tuple(e) for e in info.get("evals", []) if isinstance(e, (list, tuple)) and len(e) == 2}
            info["evals"] = [list(e) for e in sorted(listed | set(self.eval_files(run_id)))]
        write_json(self.run_dir(run_id) / marker, info)

    def eval_files(self, run_id: str) -> list[tuple[str, str]]:
        """(group, attack) of every eval result file stored for a run, sorted."""
        evals = self.run_dir(run_id) / "evals"
        return sorted((p.parent.name, p.stem) for p in evals.glob("*/*.json")) if evals.is_dir() else []

    def clear(self, run_id: str, marker: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir(run_id) / marker).unlink()

    def eval_path(self, run_id: str, group: str, attack: str) -> Path:
        return self.run_dir(run_id) / "evals" / group / f"{attack}.json"

    def read_eval(self, run_id: str, group: str, attack: str) -> dict[str, Any] | None:
        """{"row", "flags"}, None when not stored; StoreError when the file is damaged."""
        path = self.eval_path(run_id, group, attack)
        return check_eval(read_json(path), path) if path.exists() else None

    def write_eval(self, run_id: str, group: str, attack: str, row: dict[str, Any], flags) -> None:
        write_json(self.eval_path(run_id, group, attack), {"row": row, "flags": encode_flags(flags)})

    def config(self, run_id: str) -> dict[str, Any]:
        path = self.run_dir(run_id) / "config.json"
        return check_config(read_json(path), path)

    def history(self, run_id: str) -> list[dict[str, Any]]:
        path = self.run_dir(run_id) / "history.json"
        return check_history(read_json(path), path) if path.exists() else []

    def finished_runs(self) -> list[str]:
        return [r for r in self.run_ids() if self.has(r, DONE)]

    def iter_evals(self, run_id: str, with_flags: bool = True) -> Iterator[dict[str, Any]]:
        """Every stored eval result of a run: the row, plus `flags` (a '0'/'1' string) when asked."""
        evals = self.run_dir(run_id) / "evals"
        for path in sorted(evals.glob("*/*.json")) if evals.exists() else []:
            record = check_eval(read_json(path), path)
            row = dict(record["row"])
            if with_flags:
                row["flags"] = record["flags"]
            yield row

    def load_rows(self, with_flags: bool = False) -> list[dict[str, Any]]:
        """Rows of every finished cell (DONE written); unfinished or failed cells are invisible here."""
        return [row for run_id in self.finished_runs() for row in self.iter_evals(run_id, with_flags)]


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu", data: bytes | None = None):
    """(model, config) of a stored run, for other tools (the public Python API).

    `run_dir` is `<results>/runs/<run_id>`; `checkpoint` is "best" (selected on the validation split, never
    the test set) or "last". The model is an `nn.Module` on `device`, in eval mode (every module's `training`
    is False), taking inputs in [0, 1] (no normalisation outside it) and returning logits. `config` is the
    stored config.json: {"run_id", "train": the TrainConfig fields, "provenance"}. Example:

        model, config = load_run("results/runs/3f2a9c1b0d4e")
        logits = model(x)  # x: float (n, C, H, W) in [0, 1]

    Checkpoints load with weights_only=True; a damaged or refused file raises StoreError naming it. `data`: the
    checkpoint's bytes when already read (the evaluator hashes exactly what it loads). The run of an external
    model (bench.api.evaluate: train_attack "external") raises UsageError: its architecture is not the harness's.
    """
    run_dir = Path(run_dir)
    config = check_config(read_json(run_dir / "config.json"), run_dir / "config.json")
    path = run_dir / f"{checkpoint}.pt"
    return model_from_state(config, load_torch(path, device, data), path, device), config


def model_from_state(config: dict[str, Any], state: Any, path: Path, device: str = "cpu"):
    """The run's model with `state` (loaded from `path`) in it, on `device`, in eval mode; StoreError if the
    file holds something else than this model's state dict."""
    from bench.config.catalog import is_external

    train = config["train"]
    if is_external(train):
        from bench.config.names import UsageError
        raise UsageError(f"Run {config['run_id']} is an external model ('{train['method']}', evaluated through "
                         f"bench.api.evaluate or `bench eval --model-file`): the harness does not know its "
                         f"architecture, so it cannot rebuild it. Its weights are the state dict in {path}: load "
                         f"them into your own module (torch.load(..., weights_only=True), load_state_dict).")
    import torch

    from bench.data import DATASETS
    from bench.models import build_model

    info = DATASETS[train["dataset"]]
    model = build_model(train["model"], info.num_classes, info.in_channels, info.image_size)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StoreError(path, f"not a model state dict (a {type(state).__name__})")
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise StoreError(path, f"not a state dict of {train['model']}: {str(exc).splitlines()[0][:200]}") from None
    return model.to(device).eval()


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


# ---- integrity: the checkpoint-identity rule and a run's damaged files (torch-free) ----------------------------

def _created_ts(row: dict[str, Any]) -> float | None:
    try:
        return dt.datetime.fromisoformat(str(row["created_at"])).timestamp()
    except (KeyError, ValueError):
        return None


def predates(row: dict[str, Any], checkpoint: Path) -> bool:
    """A row written (its created_at, to the second) in a second before the checkpoint file's last write."""
    created = _created_ts(row)
    try:
        return created is not None and int(checkpoint.stat().st_mtime) > created
    except OSError:
        return False


def row_matches(row: dict[str, Any], sha: str, checkpoint: Path, final: bool) -> bool:
    """The checkpoint-identity rule: a stored eval row belongs to the checkpoint file it was computed on.

    A row with `checkpoint_sha` matches only the file with that SHA-256 (first 16 hex digits). A row without
    it (written before the column existed) matches when the checkpoint is final (training finished, or an
    epochN file, written once) and the row was not created before the file was last written: the rows
    `bench eval` stored from an interrupted run's best.pt, which training later replaced, never match."""
    if "checkpoint_sha" in row:
        return row["checkpoint_sha"] == sha
    return final and not predates(row, checkpoint)


def set_aside(path: Path, why: str) -> Path:
    """Rename a damaged or stale file to <name>.<why> (kept for inspection, invisible to the store)."""
    target = path.with_name(f"{path.name}.{why}")
    os.replace(path, target)
    return target


def inspect_run(store: Store, run_id: str, deep: bool = False) -> list[StoreError]:
    """Every problem of a run's stored files, without torch: damaged JSON (config, history, attempts, eval
    results), torch files that are truncated, garbled or unsafe (`check_torch_file`; `deep`: every CRC),
    checkpoints missing although TRAINED is written, and ("stale") eval rows of another checkpoint file than
    the one stored (checkpoint_sha compared when the file is at most CRC_LIMIT bytes or `deep`; rows without
    it: `predates`). Empty for a healthy run (and for a run directory not started)."""
    run_dir = store.run_dir(run_id)
    if not run_dir.is_dir():
        return []
    out: list[StoreError] = []

    def check(fn) -> Any:
        try:
            return fn()
        except StoreError as exc:
            out.append(exc)
            return None

    trained = (run_dir / TRAINED).exists()
    if (run_dir / "config.json").exists() or trained or (run_dir / DONE).exists():
        check(lambda: store.config(run_id))
    check(lambda: store.history(run_id))
    attempts = run_dir / "attempts.json"
    if attempts.exists():
        value = check(lambda: read_json(attempts))
        if value is not None and not isinstance(value, list):
            out.append(StoreError(attempts, "valid JSON but not a list of attempts"))
    for path in sorted(run_dir.glob("*.pt")):
        if (problem := check_torch_file(path, deep)) is not None:
            out.append(problem)
    if trained:
        out += [StoreError(run_dir / n, "missing, though TRAINED is written") for n in ("best.pt", "last.pt")
                if not (run_dir / n).exists()]
    evals = run_dir / "evals"
    shas: dict[Path, str | None] = {}
    for path in sorted(evals.glob("*/*.json")) if evals.is_dir() else []:
        record = check(lambda: check_eval(read_json(path), path))
        if record is None:
            continue
        row = record["row"]
        ckpt = run_dir / f"{row.get('checkpoint', '?')}.pt"
        if "checkpoint_sha" in row:  # hashed here when small (the CRC check reads it anyway), else by the runner
            if ckpt not in shas:
                small = ckpt.is_file() and (deep or ckpt.stat().st_size <= CRC_LIMIT)
                shas[ckpt] = file_sha(ckpt) if small else None
            if shas[ckpt] is not None and shas[ckpt] != row["checkpoint_sha"]:
                out.append(StoreError(path, f"computed on another {ckpt.name} (checkpoint_sha "
                                      f"{row['checkpoint_sha']}, the file's is {shas[ckpt]})", "stale"))
        elif predates(row, ckpt):
            out.append(StoreError(path, f"computed before {ckpt.name} was last written (a row without "
                                  "checkpoint_sha): another model's result", "stale"))
    return out
