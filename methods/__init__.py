"""The method registry: an explicit dict, readable in one screen. Add a method = one file + one line here, or
a plugin outside the package (bench/plugins.py)."""
from __future__ import annotations

import dataclasses
from typing import Any

from bench.config.catalog import METHOD_ALIASES
from bench.config.names import lookup
from bench.plugins import attach
from methods.at import AT
from methods.base import Method, StepContext, StepOutput
from methods.gairat import GAIRAT
from methods.lrat import LRAT, LSAT
from methods.mail import MAIL
from methods.mart import MART
from methods.trades import TRADES

METHODS: dict[str, type[Method]] = {
    "at": AT,
    "trades": TRADES,
    "mart": MART,
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


def build_method_reweighting_now(name: str) -> Method:
    """The method with its defaults but no plain-AT burn-in (burn_in 0 where it has one): reweighting from the
    first step, as `bench speed` times it and the tests exercise it."""
    cls = lookup("method", name, METHODS)
    has_burn_in = any(f.name == "burn_in" for f in dataclasses.fields(cls.Params))
    return cls.make({"burn_in": 0.0} if has_burn_in else {})


attach("methods", METHODS.__setitem__)  # plugins (bench/plugins.py): installed entry points, `--plugin` modules

__all__ = ["METHODS", "Method", "StepContext", "StepOutput", "build_method", "build_method_reweighting_now", "canonical_method"]
