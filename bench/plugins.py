"""Plugins: methods, models, datasets and attacks from outside the package, with no edit to it.

Two ways in, one registration path:
- an installed distribution declares entry points in the groups of `GROUPS` (name = the component's name,
  value = the object), e.g. in its pyproject.toml:
      [project.entry-points."lrat_bench.methods"]
      focal = "focal_plugin:FocalAT"
- `bench --plugin MODULE` (repeatable; a module name importable from the working directory, or a .py file)
  imports a module that is not installed; it lists its components in a dict named `LRAT_BENCH`, keyed like
  `GROUPS` ({"methods": {"focal": FocalAT}, ...}).
The `--plugin` modules are passed on to every process the command starts (spawned workers, Ray workers)
through the environment variable `ENV`, and each registry (methods/, bench/models.py, bench/data.py,
bench/attacks/training.py, bench/evaluation/attacks.py) `attach`es to this module when it is built, which
loads the plugins: every process sees the same components.

What each kind's object is (docs/contributing.md has a complete plugin package):
- methods: a `methods.base.Method` subclass (its `name`, `summary`, `Params` dataclass, `loss`);
- models: a callable (num_classes, in_channels, image_size) -> nn.Module; optional attributes `label`,
  `summary` and `lr` (the default learning rate, else 0.1);
- datasets: a `DatasetPlugin` (its catalog entry and a loader of uint8 NCHW tensors);
- train_attacks: a `bench.attacks.training.TrainAttackInfo` (catalog entry and a builder from the TrainConfig);
- eval_attacks: an `EvalAttackPlugin` (catalog entry and a builder from (eps, threat_model) of an attack
  called as attack(model, x, y) -> AttackResult, like `bench.attacks.pgd.PGD`).
A name that is already taken (a built-in or another plugin) is refused with a message naming both.
This module is torch-free; loading a plugin imports what the plugin imports.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from bench.config import catalog
from bench.config.names import UsageError

GROUPS = {"methods": "lrat_bench.methods", "models": "lrat_bench.models", "datasets": "lrat_bench.datasets",
          "train_attacks": "lrat_bench.train_attacks", "eval_attacks": "lrat_bench.eval_attacks"}
ENV = "LRAT_BENCH_PLUGINS"  # os.pathsep-separated `--plugin` modules, inherited by the worker processes
MODULE_ATTRIBUTE = "LRAT_BENCH"

SOURCES: dict[tuple[str, str], str] = {}  # (kind, name) -> where a plugin component came from
REGISTERED: dict[str, dict[str, Any]] = {kind: {} for kind in GROUPS}  # kind -> name -> the plugin's object
_HOOKS: dict[str, list[Callable[[str, Any], None]]] = {}  # kind -> the registries' install functions (`attach`)
_loaded_modules: set[str] = set()
_entry_points_loaded = False


@dataclass(frozen=True)
class DatasetPlugin:
    entry: catalog.DatasetEntry
    # data_dir (--data-dir or None) -> ((train_x, train_y), (test_x, test_y)): uint8 (N, C, H, W), int64 labels
    load: Callable[[str | None], tuple]


@dataclass(frozen=True)
class EvalAttackPlugin:
    entry: catalog.EvalAttackEntry
    build: Callable[[float, str], Any]  # (eps, threat_model) -> attack(model, x, y) -> AttackResult
    params: dict = field(default_factory=dict)  # its settings, recorded in the result rows' attack_params


def source(kind: str, name: str) -> str:
    """'built-in', or where the plugin component `name` of `kind` came from."""
    return SOURCES.get((kind, name), "built-in")


def load_plugins(modules: Iterable[str] = ()) -> None:
    """Register the installed entry points (once per process) and the `modules` plus those named in `ENV`
    (each once). `modules` are added to `ENV`, so processes started from here load them too."""
    global _entry_points_loaded
    named = [m for m in (*os.environ.get(ENV, "").split(os.pathsep), *modules) if m]
    if named:
        os.environ[ENV] = os.pathsep.join(dict.fromkeys(named))
    if not _entry_points_loaded:
        _entry_points_loaded = True  # first: registering imports methods/, whose import calls back here
        for kind, group in GROUPS.items():
            for ep in sorted(entry_points(group=group), key=lambda e: e.name):
                where = f"plugin {ep.dist.name if ep.dist else ep.value} (entry point {group})"
                register(kind, ep.name, _load_entry_point(ep, where), where)
    for module in dict.fromkeys(named):
        if module not in _loaded_modules:
            _loaded_modules.add(module)
            _register_module(module)


def _load_entry_point(ep, where: str):
    try:
        return ep.load()
    except Exception as exc:  # noqa: BLE001 - any import error of a third-party package: say which one
        raise UsageError(f"Cannot load {where}, '{ep.name} = {ep.value}': {type(exc).__name__}: {exc}") from exc


def _import(module: str):
    path = Path(module)
    if module.endswith(".py"):
        if not path.is_file():
            raise UsageError(f"--plugin {module}: no such file.")
        spec = importlib.util.spec_from_file_location(f"lrat_bench_plugin_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as exc:  # noqa: BLE001 - the plugin's own code: say which plugin, not a traceback
            sys.modules.pop(spec.name, None)
            raise UsageError(_import_failed(module, exc)) from None
        return mod
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `bench` is a console script: the working directory is not on the path
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise UsageError(f"--plugin {module}: no module of that name (give a module importable from the "
                             f"working directory, or a path to a .py file).") from None
        raise UsageError(_import_failed(module, exc)) from None
    except Exception as exc:  # noqa: BLE001 - as above
        raise UsageError(_import_failed(module, exc)) from None


def _import_failed(module: str, exc: BaseException) -> str:
    """'--plugin bad.py: importing it raised ValueError: ... (bad.py, line 3)': the plugin and where it failed."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"--plugin {module}: importing it raised {type(exc).__name__}: {exc}{where}"


def _register_module(module: str) -> None:
    mod = _import(module)
    parts = getattr(mod, MODULE_ATTRIBUTE, None)
    if not isinstance(parts, dict):
        raise UsageError(f"--plugin {module}: the module has no dict named {MODULE_ATTRIBUTE} listing its "
                         f"components (keys: {', '.join(GROUPS)}).")
    unknown = set(parts) - set(GROUPS)
    if unknown:
        raise UsageError(f"--plugin {module}: unknown kind(s) {', '.join(sorted(unknown))} in {MODULE_ATTRIBUTE} "
                         f"(kinds: {', '.join(GROUPS)}).")
    for kind, components in parts.items():
        for name, obj in components.items():
            register(kind, name, obj, f"plugin module {module} (--plugin)")


def attach(kind: str, install: Callable[[str, Any], None]) -> None:
    """Called by a registry module when it is built: `install(name, obj)` puts a component of `kind` into it,
    for those registered already and those to come; then the plugins are loaded (once per process). The
    registries import this module, never the reverse, so there is no import cycle."""
    _HOOKS.setdefault(kind, []).append(install)
    for name, obj in REGISTERED[kind].items():
        install(name, obj)
    load_plugins()


def register(kind: str, name: str, obj: Any, where: str) -> None:
    """Check one component, put it into the catalog (the torch-free readers) and every attached registry;
    refuse a taken name."""
    taken = {"methods": (catalog.METHODS, catalog.METHOD_ALIASES), "models": (catalog.MODELS,),
             "datasets": (catalog.DATASETS,), "train_attacks": (catalog.TRAIN_ATTACKS,),
             "eval_attacks": (catalog.EVAL_ATTACKS, {catalog.WORST: None})}[kind]
    if any(name in names for names in taken):
        owner = source(kind, name)
        raise UsageError(f"{where}: {kind[:-1].replace('_', ' ')} '{name}' clashes with the "
                         f"{'built-in one' if owner == 'built-in' else 'one from ' + owner}; rename it.")
    _CATALOG_ENTRY[kind](name, obj, where)
    REGISTERED[kind][name] = obj
    SOURCES[(kind, name)] = where
    for install in _HOOKS.get(kind, []):
        install(name, obj)


def _method_entry(name: str, cls, where: str) -> None:
    # duck-typed: importing methods.base here would make a cycle (methods/ attaches to this module)
    if not (isinstance(cls, type) and getattr(cls, "name", None) == name and callable(getattr(cls, "loss", None))
            and callable(getattr(cls, "entry", None)) and hasattr(cls, "Params")):
        raise UsageError(f"{where}: method '{name}' must be a methods.base.Method subclass whose `name` is "
                         f"'{name}', got {cls!r}.")
    catalog.METHODS[name] = cls.entry()


def _model_entry(name: str, factory, where: str) -> None:
    if not callable(factory):
        raise UsageError(f"{where}: model '{name}' must be a callable (num_classes, in_channels, image_size).")
    catalog.MODELS[name] = catalog.ModelEntry(getattr(factory, "label", name), getattr(factory, "summary", where),
                                              float(getattr(factory, "lr", 0.1)))


def _dataset_entry(name: str, plugin, where: str) -> None:
    if not isinstance(plugin, DatasetPlugin):
        raise UsageError(f"{where}: dataset '{name}' must be a bench.plugins.DatasetPlugin, got {plugin!r}.")
    catalog.DATASETS[name] = plugin.entry


def _train_attack_entry(name: str, info, where: str) -> None:
    if not (isinstance(getattr(info, "entry", None), catalog.TrainAttackEntry) and callable(getattr(info, "build", None))):
        raise UsageError(f"{where}: training attack '{name}' must be a bench.attacks.training.TrainAttackInfo, "
                         f"got {info!r}.")
    catalog.TRAIN_ATTACKS[name] = info.entry


def _eval_attack_entry(name: str, plugin, where: str) -> None:
    if not isinstance(plugin, EvalAttackPlugin):
        raise UsageError(f"{where}: evaluation attack '{name}' must be a bench.plugins.EvalAttackPlugin, "
                         f"got {plugin!r}.")
    catalog.EVAL_ATTACKS[name] = plugin.entry


_CATALOG_ENTRY = {"methods": _method_entry, "models": _model_entry, "datasets": _dataset_entry,
                  "train_attacks": _train_attack_entry, "eval_attacks": _eval_attack_entry}
