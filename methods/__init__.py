"""The method registry: an explicit dict, readable in one screen. Add a method = one file + one line here."""
from __future__ import annotations

from typing import Any

from bench.names import METHOD_ALIASES, lookup
from methods.at import AT
from methods.base import Method, StepContext, StepOutput
from methods.gairat import GAIRAT
from methods.lrat import LRAT, LSAT
from methods.mail import MAIL

METHODS: dict[str, type[Method]] = {
    "at": AT,
    "gairat": GAIRAT,
    "mail": MAIL,
    "lrat": LRAT,
    "lsat": LSAT,
}
METHODS.update({alias: METHODS[target] for alias, target in METHOD_ALIASES.items()})  # irat -> gairat


def canonical_method(name: str) -> str:
    return lookup("method", name, METHODS).name


def build_method(name: str, params: dict[str, Any] | None = None) -> Method:
    return lookup("method", name, METHODS).make(params)


__all__ = ["METHODS", "Method", "StepContext", "StepOutput", "build_method", "canonical_method"]
