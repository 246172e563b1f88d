"""Make `robustbench` importable: register an `autoattack` module backed by `pyautoattack`.

Why it exists: robustbench 1.1.1 does `from autoattack import AutoAttack` and `from autoattack.state import
EvaluationState`, the API of the official AutoAttack repository (fra31/auto-attack, installed from git). On PyPI
the same attack code ships as `pyautoattack`, whose class has another signature (keyword-only `attacks=`, no
`log_path`/`verbose`, `run_standard_evaluation(x, y, *, batch_size=, state_path=)` returning `(x_adv, y_adv)`),
and no PyPI package provides a module named `autoattack`. This module adapts pyautoattack to the fra31 signature,
so `robustbench.eval.benchmark` runs unchanged. lrat-bench's installation makes it the `autoattack` that is
imported when no real one is installed (lrat_bench_autoattack.py, a finder appended at start-up by a .pth file),
so `import robustbench` just works; `install()` registers it explicitly (where that .pth is absent: a checkout on
PYTHONPATH), before robustbench is first imported.

Kept as in fra31: `seed=None` seeds from the clock (pass a seed for reproducible numbers); `verbose` only sets
the `auto-attack` logger's level (configure logging to see it); `log_path` adds a file handler for the run.
Known upstream limits: pyautoattack 0.2.0's `state_path` resume refuses every state file it wrote, and
robustbench's `aa_state_path` branch calls `mean()` on a bool tensor; resume through `bench eval` instead.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
from pathlib import Path

import pyautoattack
from pyautoattack.autoattack import AutoAttack as _PyAutoAttack

log = logging.getLogger(__name__)

SUBMODULES = ("state", "checks", "autopgd_base", "fab_pt", "fab_base", "fab_projections", "square", "other_utils")


class AutoAttack(_PyAutoAttack):
    """fra31's `AutoAttack(model, norm, eps, seed, verbose, attacks_to_run, version, is_tf_model, device,
    log_path)` on top of pyautoattack's class (same attacks, same defaults)."""

    def __init__(self, model, norm="Linf", eps=.3, seed=None, verbose=True, attacks_to_run=(), version="standard",
                 is_tf_model=False, device="cuda", log_path=None):
        if is_tf_model:
            raise NotImplementedError("pyautoattack has no TensorFlow support; pass a torch model.")
        # fra31 ignores attacks_to_run unless version='custom'; pyautoattack raises instead.
        attacks = list(attacks_to_run) if version == "custom" else None
        super().__init__(model, attacks=attacks, device=device, eps=eps, norm=norm, seed=seed, version=version)
        self.verbose = verbose
        self.log_path = log_path

    def _logging(self):
        handler = logging.FileHandler(self.log_path) if self.log_path else None
        return _LogScope(self.logger, handler, logging.DEBUG if self.verbose else logging.WARNING)

    def run_standard_evaluation(self, x_orig, y_orig, bs=250, return_labels=False, state_path=None):
        """fra31 signature: returns x_adv, or (x_adv, y_adv) with return_labels=True."""
        with self._logging():
            x_adv, y_adv = super().run_standard_evaluation(
                x_orig, y_orig, batch_size=bs, state_path=Path(state_path) if state_path is not None else None)
        return (x_adv, y_adv) if return_labels else x_adv

    def run_standard_evaluation_individual(self, x_orig, y_orig, bs=250, return_labels=False):
        """fra31 signature: each attack alone on all points, {attack: x_adv} (or (x_adv, y_adv))."""
        attacks, adv = list(self.attacks_to_run), {}
        try:
            with self._logging():
                for name in attacks:
                    self.attacks_to_run = [name]
                    x_adv, y_adv = super().run_standard_evaluation(x_orig, y_orig, batch_size=bs)
                    adv[name] = (x_adv, y_adv) if return_labels else x_adv
        finally:
            self.attacks_to_run = attacks
        return adv

    def clean_accuracy(self, x_orig, y_orig, bs=250):
        with self._logging():
            return super().clean_accuracy(x_orig, y_orig, bs=bs)


class _LogScope:
    """The logger's level and an optional file handler, for the duration of one call."""

    def __init__(self, logger: logging.Logger, handler: logging.Handler | None, level: int):
        self.logger, self.handler, self.level = logger, handler, level

    def __enter__(self):
        self.old = self.logger.level
        self.logger.setLevel(self.level)
        if self.handler is not None:
            self.logger.addHandler(self.handler)

    def __exit__(self, *exc):
        self.logger.setLevel(self.old)
        if self.handler is not None:
            self.logger.removeHandler(self.handler)
            self.handler.close()


def build_module() -> types.ModuleType:
    module = types.ModuleType("autoattack", __doc__)
    module.AutoAttack = AutoAttack
    module.__version__ = pyautoattack.__version__
    module.__lrat_bench_shim__ = True
    for name in SUBMODULES:
        setattr(module, name, importlib.import_module(f"pyautoattack.{name}"))
    return module


def register_submodules(module: types.ModuleType) -> None:
    """`autoattack.state` and the others in sys.modules: the shim is a module, not a package, so `from
    autoattack.state import EvaluationState` (robustbench.eval) finds them there."""
    for name in SUBMODULES:
        sys.modules[f"autoattack.{name}"] = getattr(module, name)


def install() -> bool:
    """Register the shim as `autoattack` (and its submodules) unless a real `autoattack` is importable.
    Idempotent. Returns True when the shim is (now) the module robustbench will get."""
    current = sys.modules.get("autoattack")
    if current is not None:
        return bool(getattr(current, "__lrat_bench_shim__", False))
    spec = importlib.util.find_spec("autoattack")
    if spec is not None and not getattr(spec.loader, "lrat_bench_fallback", False):  # the fallback is this shim
        log.info("a real 'autoattack' package is installed; not shadowing it")
        return False
    module = build_module()
    sys.modules["autoattack"] = module
    register_submodules(module)
    return True
