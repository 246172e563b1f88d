"""Resolving a merged matrix into cells: every name and number checked against the catalog (torch-free),
then one cell per (dataset, model, method, train attack, seed). Raises UsageError; writes nothing."""
from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from bench.config import catalog
from bench.config.configs import EvalConfig, TrainConfig, parse_checkpoint, parse_eps
from bench.config.method_params import (canonical_method, check_method_attacks, parse_train_attack,
                                        resolve_method_params)
from bench.config.names import UsageError, lookup, split_list

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    """One unit of work: a training config (the run identity) and the eval suite applied to it."""

    train: TrainConfig
    eval: EvalConfig

    @property
    def label(self) -> str:
        t = self.train
        return f"{t.method}/{t.train_attack} {t.dataset}/{t.model} seed {t.seed} [{t.run_id}]"


def _parse_method_params(file_params: dict[str, dict[str, Any]], flag_params: Iterable[str],
                         chosen: list[str]) -> dict[str, dict[str, Any]]:
    """Canonical method -> overrides. File tables for methods outside the matrix are ignored (a file may hold
    parameters for more methods than a command line selects); a flag naming such a method is an error."""
    overrides: dict[str, dict[str, Any]] = {}
    for method, params in file_params.items():
        m = canonical_method(method)
        if m in chosen:
            overrides.setdefault(m, {}).update(params)
        else:
            log.info("matrix file: parameters of method '%s' ignored (not in the methods of this run)", m)
    for item in flag_params:
        key, sep, value = item.partition("=")
        method, dot, param = key.partition(".")
        if not sep or not dot:
            raise UsageError(f"--method-param takes METHOD.NAME=VALUE (e.g. gairat.lam=0), got '{item}'.")
        m = canonical_method(method)
        if m not in chosen:
            raise UsageError(f"--method-param names method '{m}', which is not in --methods.")
        overrides.setdefault(m, {})[param.strip()] = value.strip()
    return overrides


def _check_numbers(values: dict[str, Any]) -> None:
    for name in ("epochs", "batch_size", "val_size", "attack_steps", "train_subset", "test_subset",
                 "eval_batch_size"):
        v = values.get(name)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {v}.")
    for name in ("lr", "weight_decay"):
        if values[name] is None:  # lr: the model's default, below
            continue
        v = float(values[name])
        if not (v >= 0 and v < math.inf) or (name == "lr" and v == 0):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, "
                             f"got {values[name]}.")


@dataclass(frozen=True)
class _Grid:
    datasets: list[str]
    models: list[str]  # empty: each dataset's default model
    pairs: list[tuple[str, str]]  # (method, train attack)
    suite: tuple[str, ...]
    seeds: list[int]
    checkpoints: tuple[str, ...]


def _grid(values: dict[str, Any]) -> _Grid:
    """Every name of the matrix, canonical and checked against the catalog."""
    datasets = [lookup("dataset", d, catalog.DATASETS) and d.strip().lower()
                for d in dict.fromkeys(split_list(values["dataset"]))]
    models = [lookup("model", m, catalog.MODELS) and m.strip().lower()
              for m in dict.fromkeys(split_list(values["model"] or ()))]
    methods = list(dict.fromkeys(canonical_method(m) for m in split_list(values["methods"] or ())))
    attacks = list(dict.fromkeys(parse_train_attack(a) for a in split_list(values["train_attack"] or ())))
    pairs = _pairs(values.get("rows"), methods, attacks)
    suite = tuple(dict.fromkeys(lookup("eval attack", a, catalog.EVAL_ATTACKS) and a.strip().lower()
                                for a in split_list(values["eval_attacks"])))
    for kind, items in (("--dataset", datasets), ("--methods", pairs), ("--train-attack", pairs),
                        ("--eval-attacks", suite)):
        if not items:
            raise UsageError(f"{kind} is empty.")
    raw_seeds = values["seeds"]
    try:
        seeds = list(dict.fromkeys(int(s) for s in split_list([raw_seeds] if isinstance(raw_seeds, int) else raw_seeds)))
    except ValueError:
        raise UsageError(f"--seeds takes comma-separated integers, got '{raw_seeds}'.") from None
    if not seeds:
        raise UsageError("--seeds is empty.")
    checkpoints = tuple(dict.fromkeys(parse_checkpoint(c, values["epochs"]) for c in split_list(values["checkpoints"])))
    if not checkpoints:
        raise UsageError("--checkpoints is empty.")
    return _Grid(datasets, models, pairs, suite, seeds, checkpoints)


def _method_params(values: dict[str, Any], pairs: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Method -> every parameter (defaults and overrides, checked); each method's training attacks checked."""
    methods = list(dict.fromkeys(m for m, _ in pairs))
    file_params, flag_params = values["method_params"]
    overrides = _parse_method_params(file_params, flag_params, methods)
    for m, a in pairs:
        check_method_attacks(m, a.split("+"), values["attack_steps"])
    return {m: resolve_method_params(m, overrides.get(m)) for m in methods}


def _default_eval_eps(dataset: str, threat_model: str) -> float | None:
    """L-inf: None (the training epsilon, docs/methods.md sec. 4). L2: the dataset's usual L2 budget."""
    return None if threat_model == "linf" else catalog.default_eps(dataset, threat_model)


def resolve(values: dict[str, Any]) -> list[Cell]:
    """Check every name and number of a merged matrix and expand it: one cell per
    (dataset, model, method, train attack, seed), in that order. Raises UsageError; writes nothing."""
    _check_numbers(values)
    grid = _grid(values)
    params = _method_params(values, grid.pairs)
    threat_model = values["threat_model"]
    cells = []
    for dataset in grid.datasets:
        info = catalog.DATASETS[dataset]
        eps = parse_eps(values["eps"]) if values["eps"] is not None else catalog.default_eps(dataset)
        step = parse_eps(values["step_size"]) if values["step_size"] is not None else eps / 4
        eval_eps = (parse_eps(values["eval_eps"], threat_model) if values["eval_eps"] is not None
                    else _default_eval_eps(dataset, threat_model))
        ecfg = EvalConfig(attacks=grid.suite, eps=eval_eps, threat_model=threat_model,
                          test_subset=values["test_subset"], batch_size=values["eval_batch_size"],
                          checkpoints=grid.checkpoints, precision=values["eval_precision"])
        for model in grid.models or [info.default_model]:
            base = TrainConfig(method="at", train_attack="pgd", dataset=dataset, model=model, eps=eps,
                               attack_steps=values["attack_steps"], attack_step_size=step,
                               train_subset=values["train_subset"], val_size=values["val_size"],
                               epochs=values["epochs"], batch_size=values["batch_size"],
                               lr=learning_rate(values["lr"], model, values["batch_size"], values["lr_scale"]),
                               weight_decay=float(values["weight_decay"]), augment=info.augment,
                               precision=values["precision"])
            cells += expand_pairs(base, [((m, params[m]), a) for m, a in grid.pairs], grid.seeds, ecfg)
    return cells


def _pairs(rows: list[list[str]] | None, methods: list[str], attacks: list[str]) -> list[tuple[str, str]]:
    """(method, train attack) pairs: the product of methods and attacks, or a file's rows (which typed
    --methods / --train-attack flags narrow down)."""
    if not rows:
        return list(itertools.product(methods, attacks))
    listed = list(dict.fromkeys((canonical_method(m), parse_train_attack(a)) for m, a in rows))
    kept = [(m, a) for m, a in listed if (not methods or m in methods) and (not attacks or a in attacks)]
    if not kept:
        raise UsageError(f"No row of the matrix file matches --methods/--train-attack (rows: "
                         f"{', '.join(f'{m}-{a}' for m, a in listed)}).")
    return kept


REFERENCE_BATCH = 128  # --lr-scale linear: lr x batch_size / 128 (Goyal et al. 2017)


def learning_rate(lr: float | None, model: str, batch_size: int, scale: str = "none") -> float:
    """--lr, or the model's default (bench/config/catalog.py), scaled with --lr-scale linear."""
    base = catalog.default_lr(model) if lr is None else float(lr)
    return base * batch_size / REFERENCE_BATCH if scale == "linear" else base


def expand_pairs(base: TrainConfig, pairs: list[tuple[tuple[str, dict], str]], seeds: list[int],
                 eval_cfg: EvalConfig) -> list[Cell]:
    """One cell per ((method, params), train attack) pair and seed."""
    return [Cell(replace(base, method=m, method_params=p, train_attack=a, seed=s), eval_cfg)
            for ((m, p), a), s in itertools.product(pairs, seeds)]
