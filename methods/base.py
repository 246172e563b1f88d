"""The method interface. A method turns a clean batch into a scalar training loss; the harness owns the loop.

Most methods are "adversarial CE with per-instance weights" (`WeightedCE`): they override `weights` only.
Weights are always detached constants; weights of 1 reproduce plain AT bit for bit.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from bench.attacks.pgd import AttackResult
from bench.attacks.losses import ce_loss
from bench.config.catalog import METHODS as CATALOG_METHODS, MethodEntry, Param
from bench.config.method_params import check_method_attacks, resolve_method_params


@dataclass(frozen=True)
class StepContext:
    attacks: tuple  # the run's training attacks, in the order of --train-attack
    attack_names: tuple[str, ...]
    epoch: int  # 0-based
    epochs: int
    bn_mode: str = "eval"  # model mode while the attack runs (docs/methods.md: `attack_bn_mode`)
    make_attack: Callable[[str], Any] | None = None  # name -> attack with the run's settings (LRAT's anchor)


@dataclass(frozen=True)
class StepOutput:
    loss: torch.Tensor
    weights: torch.Tensor | None = None  # detached weights actually applied, for the history's statistics
    stats: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # per-batch means, averaged per epoch
    # A term of the loss whose inputs depend on values still on the device (LRAT's anchor: which instances need
    # it). Called after `loss.backward()` has been queued, so the host waits for those values while the GPU is
    # busy with that backward instead of draining its queue; returns the term (None: nothing this batch).
    deferred: Callable[[], torch.Tensor | None] | None = None
    # Per instance (n,): its total weight over all its loss terms divided by the batch mean of those totals (1 =
    # an average instance), so that methods compare like with like in the history (`rw_*`); None for plain AT.
    relative_weights: torch.Tensor | None = None

    def backward(self) -> torch.Tensor:
        """Gradients of the whole loss (`loss` + the deferred term; they add up); returns that loss, detached."""
        self.loss.backward()
        extra = self.deferred() if self.deferred else None
        if extra is None:
            return self.loss.detach()
        extra.backward()
        return self.loss.detach() + extra.detach()


@contextmanager
def frozen_weights(model: torch.nn.Module):
    """Weights' requires_grad off while an attack runs: its backward passes then compute input gradients
    only (a compiled model gets a graph without weight gradients; eager autograd saves less)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextmanager
def in_bn_mode(model: torch.nn.Module, bn_mode: str):
    """The model in the recorded BN mode (`attack_bn_mode`) for a pass that is not the loss's, then back in
    train mode (explicitly)."""
    model.train(bn_mode == "train")
    try:
        yield
    finally:
        model.train(True)


def run_attack(model: torch.nn.Module, attack, x: torch.Tensor, y: torch.Tensor, bn_mode: str) -> AttackResult:
    """Run a training attack in the recorded BN mode with frozen weights."""
    with in_bn_mode(model, bn_mode), frozen_weights(model):
        return attack(model, x, y)


def first_reweighted_epoch(epochs: int, burn_in: float) -> int:
    """The burn-in rule: `burn_in` is the fraction of the run trained with plain AT, and the first reweighted
    0-based epoch is burn_in * epochs rounded to the nearest integer, halves up (floor(x + 1/2); the 1e-9 keeps
    products such as 0.3 * 5 = 1.4999999999999998 on their half). burn_in 0: reweighting from epoch 0;
    burn_in 1: never. The defaults are the official codes' counts at their 120 epochs: GAIRAT 59/120 (GAIRAT.py
    reweights when `(epoch + 1) >= begin_epoch`, begin_epoch 60), MAIL 76/120 (MAIL train.py: plain AT while
    `epoch <= 75`)."""
    return min(max(math.floor(burn_in * epochs + 0.5 + 1e-9), 0), epochs)


def reweighting_started(epoch: int, epochs: int, burn_in: float) -> bool:
    """Whether 0-based `epoch` of `epochs` is past the plain-AT burn-in (`first_reweighted_epoch`)."""
    return epoch >= first_reweighted_epoch(epochs, burn_in)


class Method:
    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type]  # a frozen dataclass of the method's parameters, with the papers' defaults
    # For a method outside the catalog (a plugin); a catalogued method's come from bench/config/catalog.py.
    max_attacks: ClassVar[int] = 1
    needs_kappa: ClassVar[bool] = False
    min_attack_steps: ClassVar[int] = 1

    def __init__(self, params: Any):
        self.params = params

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A catalogued method's summary is the catalog's, which `bench ls` reads without importing torch.
        if "summary" not in vars(cls) and getattr(cls, "name", None) in CATALOG_METHODS:
            cls.summary = CATALOG_METHODS[cls.name].summary

    @classmethod
    def entry(cls) -> MethodEntry:
        """The method's catalog entry (labels, parameter specs, attack rules); for a method outside the catalog,
        one built from its class attributes and its Params dataclass."""
        if cls.name in CATALOG_METHODS:
            return CATALOG_METHODS[cls.name]
        params = {f.name: Param(f.default, f"{cls.__module__}.{cls.Params.__name__}") for f in dataclasses.fields(cls.Params)}
        return MethodEntry(cls.name.upper(), getattr(cls, "summary", ""), params=params, max_attacks=cls.max_attacks,
                           needs_kappa=cls.needs_kappa, min_attack_steps=cls.min_attack_steps)

    def check_attacks(self, attack_names: tuple[str, ...], attack_steps: int | None = None) -> None:
        """Refuse, at config time, training attacks the method cannot take (bench/config/method_params.py)."""
        check_method_attacks(self.name, attack_names, attack_steps, self.entry(), dataclasses.asdict(self.params))

    def loss(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepOutput:
        raise NotImplementedError

    @classmethod
    def make(cls, overrides: dict[str, Any] | None = None) -> "Method":
        return cls(build_params(cls.name, cls.Params, overrides or {}, cls.entry()))


class WeightedCE(Method):
    """loss = (1/n) sum_i w_i CE(f(x_adv_i), y_i), one training attack; `weights` returns None for w = 1."""

    def weights(self, logits_adv: torch.Tensor, y: torch.Tensor, adv: AttackResult, attack,
                ctx: StepContext) -> torch.Tensor | None:
        return None

    def loss(self, model, x, y, ctx):
        adv = run_attack(model, ctx.attacks[0], x, y, ctx.bn_mode)
        logits = model(adv.x_adv)
        per_example = ce_loss(logits, y)
        w = self.weights(logits.detach(), y, adv, ctx.attacks[0], ctx)
        if w is None:
            return StepOutput(per_example.mean())
        w = w.detach()
        return StepOutput((w * per_example).mean(), w, relative_weights=w / w.mean())


class NaturalAndAdversarial(Method):
    """loss = objective(f(x), f(x_adv), y, **params), both passes in train mode, f(x) first (as trades.py and
    mart.py order them), x_adv from the run's one training attack: TRADES and MART."""

    @staticmethod
    def objective(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, **params) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, model, x, y, ctx):
        x_adv = run_attack(model, ctx.attacks[0], x, y, ctx.bn_mode).x_adv
        return StepOutput(self.objective(model(x), model(x_adv), y, **dataclasses.asdict(self.params)))


def build_params(method: str, params_cls: type, overrides: dict[str, Any], entry: MethodEntry):
    """The method's Params from the catalog's defaults and checked overrides (UsageError on a bad value)."""
    return params_cls(**resolve_method_params(method, overrides, entry))
