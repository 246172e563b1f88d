"""Which code trained a run (issue 23, item 6): `code_fingerprint`, the first 12 hex digits of a SHA-256 over
the code that decides a run's weights: every *.py under methods/, bench/training/ and bench/attacks/, and
bench/models.py and bench/data.py, as sorted paths (relative to the folder holding the packages) and contents.

Recorded in config.json's provenance when a run is first trained and copied into its result rows; not part of
the run id (a changed comment must not make every cell new). `bench status`, `bench report` and `bench run`
say when runs of one store or table were trained by different fingerprints. Torch-free, and `methods` is
located without being imported (importing it imports torch).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# (package, glob inside it): the code a run's weights depend on. Evaluation, reporting and the CLI are not in
# it: they change no weights.
FINGERPRINTED = (("methods", "**/*.py"), ("bench", "training/**/*.py"), ("bench", "attacks/**/*.py"),
                 ("bench", "models.py"), ("bench", "data.py"))
LENGTH = 12


def package_dir(name: str) -> Path:
    """The folder of an installed package (an editable install: the repository's), found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package '{name}' not found: cannot fingerprint the training code")
    return Path(next(iter(spec.submodule_search_locations)))


def fingerprint_files(roots: Mapping[str, Path]) -> list[tuple[str, Path]]:
    """(relative path, file) of every fingerprinted file, sorted by the relative path ('bench/data.py', ...);
    `roots`: package name -> its folder."""
    files = {f"{pkg}/{p.relative_to(roots[pkg]).as_posix()}": p
             for pkg, pattern in FINGERPRINTED for p in roots[pkg].glob(pattern) if p.is_file()}
    return sorted(files.items())


def fingerprint(files: Iterable[tuple[str, Path]]) -> str:
    """SHA-256 over (path, content) pairs, each length-prefixed so no two file sets hash alike by concatenation."""
    h = hashlib.sha256()
    for rel, path in files:
        for part in (rel.encode(), path.read_bytes()):
            h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:LENGTH]


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """The installed code's fingerprint (computed once per process: a process trains with the code it loaded)."""
    return fingerprint(fingerprint_files({pkg: package_dir(pkg) for pkg in {p for p, _ in FINGERPRINTED}}))


def recorded_fingerprint(config: Mapping[str, Any] | None) -> str | None:
    """The fingerprint stored in a run's config.json; None for runs trained before it was recorded, external
    models, or a config that cannot say."""
    prov = config.get("provenance") if isinstance(config, Mapping) else None
    value = prov.get("code_fingerprint") if isinstance(prov, Mapping) else None
    return value if isinstance(value, str) and value else None


def mixed_fingerprints_line(fingerprints: Iterable[str | None]) -> str:
    """'runs trained by 2 different code fingerprints: abc (3 runs), def (1 run)' when more than one fingerprint
    is recorded (None: not recorded, not counted), the most common first; '' otherwise."""
    counts: dict[str, int] = {}
    for fp in fingerprints:
        if fp is not None:
            counts[fp] = counts.get(fp, 0) + 1
    if len(counts) < 2:
        return ""
    parts = [f"{fp} ({n} run{'s' if n != 1 else ''})" for fp, n in sorted(counts.items(), key=lambda c: (-c[1], c[0]))]
    return f"runs trained by {len(counts)} different code fingerprints: " + ", ".join(parts)
