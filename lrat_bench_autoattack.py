"""`import autoattack` where no real autoattack is installed, so that `import robustbench` works in lrat-bench's
environment with no manual step.

robustbench 1.1.1 imports `autoattack`, the module of the official code installed from git (fra31/auto-attack);
PyPI ships that code as `pyautoattack`, and no PyPI package provides `autoattack`. lrat-bench installs
`lrat_bench_autoattack.pth` beside this module (setup.py); its one line, `import lrat_bench_autoattack`, runs at
interpreter start-up and appends `Fallback` to the END of sys.meta_path. Every other finder is asked first, so a
real autoattack (fra31's, installed normally or editable, or on PYTHONPATH) is always the one imported; only when
none exists does `import autoattack` get the adapter of bench/evaluation/autoattack_compat.py (pyautoattack behind
fra31's API). Start-up cost: this module, standard library only; torch and pyautoattack load only when
`autoattack` itself is imported. A top-level module, not part of `bench`: importing `bench` at start-up would fix
which checkout `python -m bench` runs.
"""
from __future__ import annotations

import sys

NAME = "autoattack"


class _Loader:
    """Builds the adapter module; marked so that autoattack_compat.install() knows the spec is ours, not real."""

    lrat_bench_fallback = True

    def create_module(self, spec):
        from bench.evaluation.autoattack_compat import build_module

        return build_module()

    def exec_module(self, module) -> None:
        from bench.evaluation.autoattack_compat import register_submodules

        register_submodules(module)  # `from autoattack.state import ...` (robustbench.eval) finds them


class Fallback:
    """A meta-path finder for the one name `autoattack`, consulted after every other finder."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != NAME:
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec(NAME, _Loader(), origin="lrat-bench's adapter of pyautoattack (lrat_bench_autoattack.py)")


def install() -> None:
    """Append the finder once (idempotent: a second .pth run or an explicit import adds nothing)."""
    if not any(getattr(f, "__name__", None) == Fallback.__name__ and getattr(f, "__module__", None) == __name__
               for f in sys.meta_path):
        sys.meta_path.append(Fallback)


install()
