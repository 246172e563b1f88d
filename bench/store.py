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
import hashlib
import json
import os
import pickletools
import subprocess
import tempfile
import zipfile
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


class StoreError(Exception):
    """A stored file that cannot be used, with the file and why. `kind`: "damaged" (missing, truncated, garbled
    or of the wrong shape: `bench run` redoes it), "unsafe" (a torch file that asks to import code a weights-only
    load refuses: never loaded, never silently replaced) or "stale" (eval rows older than their checkpoint)."""

    def __init__(self, path: str | Path, reason: str, kind: str = "damaged"):
        self.path, self.reason, self.kind = Path(path), reason, kind
        super().__init__(f"{self.path}: {reason}")


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))


def read_json(path: str | Path) -> Any:
    """The parsed file; StoreError naming it when it is missing, unreadable or not JSON (e.g. truncated)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StoreError(path, "missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(path, f"unreadable ({type(exc).__name__}: {exc})") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StoreError(path, f"not valid JSON ({exc}; {len(text)} characters): truncated or garbled") from None


def _expect(ok: bool, path: Path, what: str) -> None:
    if not ok:
        raise StoreError(path, f"valid JSON but not {what}")


def check_config(obj: Any, path: Path) -> dict[str, Any]:
    _expect(isinstance(obj, dict) and isinstance(obj.get("train"), dict) and "run_id" in obj, path,
            'a run config ({"run_id", "train": {...}})')
    return obj


def check_history(obj: Any, path: Path) -> list[dict[str, Any]]:
    _expect(isinstance(obj, list) and all(isinstance(h, dict) and isinstance(h.get("epoch"), int) for h in obj),
            path, "a training history (a list of per-epoch entries)")
    return obj


def check_eval(obj: Any, path: Path) -> dict[str, Any]:
    ok = (isinstance(obj, dict) and isinstance(obj.get("row"), dict) and isinstance(obj.get("flags"), str)
          and set(obj["flags"]) <= {"0", "1"})
    _expect(ok, path, 'an eval result ({"row": {...}, "flags": "0110..."})')
    n = obj["row"].get("n_eval")
    if isinstance(n, int) and n != len(obj["flags"]):
        raise StoreError(path, f"holds {len(obj['flags'])} per-example flags for n_eval {n}: truncated or garbled")
    return obj


# ---- torch files, checked without torch ---------------------------------------------------------------------

# The globals a torch.save'd state dict, optimizer/scheduler state or our train_state refers to (what a
# weights-only load allows); anything else in a stored .pt file is a payload, or a file we did not write.
SAFE_GLOBALS = {("collections", "OrderedDict"), ("collections", "Counter"), ("torch._utils", "_rebuild_tensor_v2"),
                ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
                ("torch._tensor", "_rebuild_from_type_v2")}
# Train states written before RNG states were plain tensors/lists hold numpy's MT19937 state (see
# bench/training/loop.py: they resume with exactly these allowed).
LEGACY_STATE_GLOBALS = {("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
                        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.dtypes", "UInt32DType"),
                        ("_codecs", "encode")}  # how protocol 2 pickles bytes (allowed by torch too)
CRC_LIMIT = 64 * 2**20  # `inspect_run` checks every byte (CRC) of torch files up to this size; `deep` of all


def _unsafe_globals(pickled: bytes, path: Path) -> list[str]:
    allowed = SAFE_GLOBALS | (LEGACY_STATE_GLOBALS if path.name == "train_state.pt" else set())
    bad = []
    for op, arg, _ in pickletools.genops(pickled):
        if op.name == "GLOBAL":
            module, name = str(arg).split(" ", 1)
            module = {"__builtin__": "builtins"}.get(module, module)  # protocol 2 writes Python 2's name
            if (module, name) not in allowed and not (module == "torch" and name.endswith("Storage")):
                bad.append(f"{module}.{name}")
        elif op.name in ("STACK_GLOBAL", "INST", "OBJ"):  # never in what torch.save writes (protocol 2)
            bad.append(f"a {op.name} opcode")
    return bad


def check_torch_file(path: str | Path, deep: bool = False, data: bytes | None = None) -> StoreError | None:
    """None if `path` looks like a whole torch.save file that a weights-only load accepts; else the StoreError
    ("damaged" or "unsafe"). Reads the zip directory and the pickle (never unpickling it); the CRC of every
    member too when the file is at most CRC_LIMIT bytes or `deep` (torch itself does not check tensor bytes).
    `data`: the file's bytes, already read."""
    import io

    path = Path(path)
    try:
        size = len(data) if data is not None else path.stat().st_size
        with zipfile.ZipFile(io.BytesIO(data) if data is not None else path) as z:
            names = z.namelist()
            pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pkl) != 1:
                return StoreError(path, "not a torch checkpoint (a zip archive without data.pkl)")
            pickled = z.read(pkl[0])  # CRC-checked
            if deep or size <= CRC_LIMIT:
                bad = z.testzip()
                if bad is not None:
                    return StoreError(path, f"garbled: member {bad} fails its CRC check")
    except FileNotFoundError:
        return StoreError(path, "missing")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        try:  # torch's legacy format, or a bare pickle: still say if it asks to run code
            if data is None:
                with open(path, "rb") as f:
                    data = f.read(1 << 20)
            bad = _unsafe_globals(data[:1 << 20], path)
        except Exception:  # noqa: BLE001 - not a pickle either
            bad = []
        if bad:
            return StoreError(path, f"refused: a pickle that asks to import {', '.join(bad)}", "unsafe")
        return StoreError(path, f"truncated or garbled ({type(exc).__name__}: {exc})")
    try:
        bad = _unsafe_globals(pickled, path)
    except Exception as exc:  # noqa: BLE001 - pickletools raises ValueError and others on garbage
        return StoreError(path, f"garbled pickle ({type(exc).__name__}: {exc})")
    if bad:
        return StoreError(path, f"refused: it asks to import {', '.join(sorted(set(bad)))}, which a weights-only "
                          "load never runs (a planted payload, or a file this tool did not write)", "unsafe")
    return None


def load_torch(path: str | Path, map_location: str = "cpu", data: bytes | None = None) -> Any:
    """torch.load with weights_only=True (tensors and plain containers only: a pickle payload is refused, never
    run); any failure is a StoreError naming the file. `data`: the file's bytes, already read (and hashed)."""
    import io

    import torch

    path = Path(path)
    try:
        source = io.BytesIO(data) if data is not None else path
        return torch.load(source, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise StoreError(path, "missing") from None
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, ...
        text = str(exc)
        if "GLOBAL" in text or "global" in text:
            detail = next((line.strip() for line in text.splitlines()
                           if "GLOBAL" in line or "Unsupported global" in line), text.splitlines()[0])
            raise StoreError(path, f"refused by the weights-only load: {detail}", "unsafe") from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise StoreError(path, f"truncated or garbled ({type(exc).__name__}: {first[:200]})") from None


def file_sha(path: str | Path | None = None, data: bytes | None = None) -> str:
    """The first 16 hex digits of a file's SHA-256: what an eval row's `checkpoint_sha` records."""
    return hashlib.sha256(data if data is not None else Path(path).read_bytes()).hexdigest()[:16]


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
    checkpoint's bytes when already read (the evaluator hashes exactly what it loads).
    """
    run_dir = Path(run_dir)
    config = check_config(read_json(run_dir / "config.json"), run_dir / "config.json")
    path = run_dir / f"{checkpoint}.pt"
    return model_from_state(config, load_torch(path, device, data), path, device), config


def model_from_state(config: dict[str, Any], state: Any, path: Path, device: str = "cpu"):
    """The run's model with `state` (loaded from `path`) in it, on `device`, in eval mode; StoreError if the
    file holds something else than this model's state dict."""
    import torch

    from bench.data import DATASETS
    from bench.models import build_model

    train = config["train"]
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
