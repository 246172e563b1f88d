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
from bench.config.configs import EvalConfig, TrainConfig, check_budget, parse_checkpoint, parse_eps
from bench.config.limits import MAX_ATTACK_STEPS, MAX_EPOCHS, MAX_LR, MAX_SEED, MAX_WEIGHT_DECAY
from bench.config.matrix_merge import origin
from bench.config.method_params import (canonical_method, check_method_attacks, params_for_attack,
                                        parse_train_attack, resolve_method_params)
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
        try:  # each flag checked on its own, so that the message names it
            resolve_method_params(m, {param.strip(): value.strip()})
        except UsageError as exc:
            raise UsageError(f"--method-param {item}: {exc}") from None
        overrides.setdefault(m, {})[param.strip()] = value.strip()
    return overrides


# Counts: at least 1; an upper bound where a larger value can only be a mistake (bench/config/limits.py says
# why). The sizes that depend on the dataset (val_size, train_subset, test_subset, batch_size) are checked per
# dataset in _check_sizes.
_COUNTS = {"epochs": MAX_EPOCHS, "batch_size": None, "val_size": None, "attack_steps": MAX_ATTACK_STEPS,
           "saa_steps": MAX_ATTACK_STEPS,
           "train_subset": None, "test_subset": None, "eval_batch_size": None}
_RATES = {"lr": (MAX_LR, "> 0", "SGD diverges far below it; recipes use 0.01-0.2"),
          "weight_decay": (MAX_WEIGHT_DECAY, ">= 0", "recipes use 1e-4 to 5e-3")}


def _check_numbers(values: dict[str, Any]) -> None:
    for name, high in _COUNTS.items():
        v = values.get(name)
        if v is None:
            continue
        if v < 1:
            raise UsageError(f"{origin(values, name)} must be >= 1, got {v}.")
        if high is not None and v > high:
            raise UsageError(f"{origin(values, name)} must be at most {high:,} (far beyond any recipe: a larger "
                             f"value is a typo), got {v:,}.")
    for name, (high, low, why) in _RATES.items():
        raw = values[name]
        if raw is None:  # lr: the model's default, below
            continue
        try:
            v = float(raw)
        except OverflowError:  # an integer beyond any float, from a matrix file
            v = math.inf
        if not (0 <= v <= high) or (low == "> 0" and v == 0):  # NaN fails both
            raise UsageError(f"{origin(values, name)} must be a finite number {low} and at most {high:g} ({why}), "
                             f"got {raw}.")


def _check_sizes(values: dict[str, Any], dataset: str, info: catalog.DatasetEntry) -> None:
    """The sizes that must fit the dataset (catalog sizes, so --dry-run reads no data): a validation split that
    leaves no training point divides by zero after the work has started; a subset larger than its split is
    refused rather than cut silently (the table would say n = 100,000 while 10,000 points were attacked); a
    batch size the user gave that exceeds the training set makes every epoch one step on all of it (the
    default, 128, on a smaller test subset is left alone: one batch per epoch)."""
    val = values["val_size"]
    if val >= info.n_train:
        raise UsageError(f"{origin(values, 'val_size')} must be smaller than the training set of {dataset} "
                         f"({info.n_train:,} points), got {val:,}: no point would be left to train on.")
    n_train = info.n_train - val
    subset = values["train_subset"]
    if subset is not None and subset > n_train:
        raise UsageError(f"{origin(values, 'train_subset')} must be at most the {n_train:,} training points "
                         f"{dataset} keeps after its {val:,} validation points, got {subset:,}; leave it out to "
                         f"train on all of them.")
    test = values["test_subset"]
    if test is not None and test > info.n_test:
        raise UsageError(f"{origin(values, 'test_subset')} must be at most the size of {dataset}'s test set "
                         f"({info.n_test:,} points), got {test:,}; leave it out to evaluate on all of it.")
    batch, n = values["batch_size"], subset or n_train
    if "batch_size" in getattr(values, "given", ()) and batch > n:
        raise UsageError(f"{origin(values, 'batch_size')} must be at most the training set ({n:,} points of "
                         f"{dataset}), got {batch:,}: every epoch would be a single step on all of it.")


def _eps(values: dict[str, Any], name: str, threat_model: str = "linf", what: str = "Epsilon") -> float:
    """A budget or step size of the matrix, read with parse_eps; the message names its flag or file line."""
    try:
        return parse_eps(values[name], threat_model, what)
    except UsageError as exc:
        raise UsageError(f"{origin(values, name)}: {exc}") from None


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
        raise UsageError(f"{origin(values, 'seeds')} takes comma-separated integers, got '{raw_seeds}'.") from None
    if not seeds:
        raise UsageError(f"{origin(values, 'seeds')} is empty.")
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:  # limits.MAX_SEED: the range numpy and the per-epoch shuffle seeds take
        raise UsageError(f"{origin(values, 'seeds')} must lie in [0, 2^32 - 1 = {MAX_SEED}], got {bad[0]}.")
    checkpoints = tuple(dict.fromkeys(parse_checkpoint(c, values["epochs"]) for c in split_list(values["checkpoints"])))
    if not checkpoints:
        raise UsageError("--checkpoints is empty.")
    return _Grid(datasets, models, pairs, suite, seeds, checkpoints)


def _method_params(values: dict[str, Any], pairs: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Method -> every parameter (defaults and overrides, checked); each method's training attacks checked."""
    methods = list(dict.fromkeys(m for m, _ in pairs))
    file_params, flag_params = values["method_params"]
    overrides = _parse_method_params(file_params, flag_params, methods)
    params = {m: resolve_method_params(m, overrides.get(m)) for m in methods}
    for m, a in pairs:
        check_method_attacks(m, a.split("+"), values["attack_steps"], params=params[m])
    return params


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
        _check_sizes(values, dataset, info)
        eps = _eps(values, "eps") if values["eps"] is not None else catalog.default_eps(dataset)
        step = _eps(values, "step_size", what="Step size") if values["step_size"] is not None else eps / 4
        if values["eval_eps"] is not None:  # L2: at most sqrt(d), as `bench eval` and the eps guard refuse
            eval_eps = _eps(values, "eval_eps", threat_model)
            try:
                check_budget(eval_eps, threat_model, info.in_channels * info.image_size ** 2)
            except UsageError as exc:
                raise UsageError(f"{origin(values, 'eval_eps')} on {dataset} ({info.in_channels} x "
                                 f"{info.image_size} x {info.image_size} inputs): {exc}") from None
        else:
            eval_eps = _default_eval_eps(dataset, threat_model)
        ecfg = EvalConfig(attacks=grid.suite, eps=eval_eps, threat_model=threat_model,
                          test_subset=values["test_subset"], batch_size=values["eval_batch_size"],
                          checkpoints=grid.checkpoints, precision=values["eval_precision"])
        for model in grid.models or [info.default_model]:
            lr = learning_rate(values["lr"], model, values["batch_size"], values["lr_scale"])
            if lr > MAX_LR:  # --lr was checked; linear scaling can still take it past the bound
                raise UsageError(f"The learning rate {lr:g} (--lr {values['lr'] or catalog.default_lr(model):g} x "
                                 f"--batch-size {values['batch_size']} / {REFERENCE_BATCH}, --lr-scale linear) is "
                                 f"above {MAX_LR:g}: SGD diverges far below it.")
            base = TrainConfig(method="at", train_attack="pgd", dataset=dataset, model=model, eps=eps,
                               attack_steps=values["attack_steps"], saa_steps=values["saa_steps"],
                               attack_step_size=step,
                               train_subset=values["train_subset"], val_size=values["val_size"],
                               epochs=values["epochs"], batch_size=values["batch_size"],
                               lr=lr,
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
    """One cell per ((method, params), train attack) pair and seed; parameters that name a training attack
    the pair does not train with reset to their defaults (`params_for_attack`)."""
    return [Cell(replace(base, method=m, method_params=params_for_attack(p, a, catalog.METHODS[m]), train_attack=a,
                         seed=s), eval_cfg)
            for ((m, p), a), s in itertools.product(pairs, seeds)]
