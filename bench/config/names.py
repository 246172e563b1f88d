"""Name lookup with "did you mean" errors, shared by every registry (methods, attacks, data, models)."""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


class UsageError(ValueError):
    """Bad user input (unknown name, bad value): the CLI turns it into exit code 2, before any work."""


def suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean: {close[0]}?" if close else ""


def lookup(kind: str, name: str, registry: Mapping[str, T]) -> T:
    """registry[name], or a UsageError naming the closest valid choice and listing them all."""
    key = name.strip().lower()
    if key in registry:
        return registry[key]
    choices = sorted(registry)
    raise UsageError(f"Unknown {kind} '{name}'.{suggest(key, choices)} (choices: {', '.join(choices)})")


def split_list(value: str | Iterable[str]) -> tuple[str, ...]:
    """'a, b,c' -> ('a', 'b', 'c'); empty items dropped. Tuples/lists pass through (config files)."""
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return tuple(i.strip() for i in items if i.strip())

