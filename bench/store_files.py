"""The store's files, torch-free: atomic writes, JSON reads that name the file when it is damaged, the shape
of each stored JSON file, and torch files checked (without torch) and loaded weights-only (torch imported only
to load). `bench/store.py` builds the run directories on these; they re-export from there.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickletools
import secrets
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _create_temp(path: Path) -> str:
    """Create an empty, new `.<name>.<random>.tmp` beside `path` and return its name.

    Created as open() creates files (mode 0o666, which the kernel reduces by the process umask and a folder's
    default ACL), not as tempfile.mkstemp does (0600): the renamed file must be readable by whoever may read
    the folder, 0644 under umask 022 and 0600 under 077. No umask is read or changed (os.umask can only be read
    by setting it, a race with other threads creating files); O_EXCL makes the name ours alone."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync and rename it over `path` (atomic on POSIX).

    The file gets the mode open() would give it under the process umask (see `_create_temp`); a writer that
    opens the yielded path keeps that mode (opening an existing file does not change it). Missing folders are
    created with os.makedirs, which applies the umask too."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path)
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
    _check_counts(obj["row"], obj["flags"], path)
    return obj


ACCURACY_TOLERANCE = 1e-9  # a row's accuracy is its flags' mean, up to float rounding


def _check_counts(row: dict[str, Any], flags: str, path: Path) -> None:
    """The row's `accuracy` (and `n_robust`) are what its flags say: results.csv and the tables, which read
    them from different places, can then never disagree (an edited number is a damaged file)."""
    if not flags:
        return
    robust = flags.count("1")
    acc = row.get("accuracy")
    if not isinstance(acc, (int, float)) or isinstance(acc, bool) or not abs(acc - robust / len(flags)) <= \
            ACCURACY_TOLERANCE:
        raise StoreError(path, f"accuracy {acc!r} is not the mean of its {len(flags)} per-example flags "
                         f"({robust / len(flags):.6g}): edited or garbled")
    if isinstance(row.get("n_robust"), int) and row["n_robust"] != robust:
        raise StoreError(path, f"n_robust {row['n_robust']} is not the count of its robust flags ({robust}): "
                         "edited or garbled")


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
