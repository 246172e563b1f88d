"""Attacks as frozen dataclasses with one call shape: `attack(model, x, y) -> AttackResult(x_adv, kappa)`.

An attack never changes `model.training`: the caller sets the mode (training attacks run in eval mode by
default, `attack_bn_mode`). Gradients are taken with respect to the input only (`torch.autograd.grad`), so no
weight gradient is computed or accumulated. Inputs and outputs are in [0, 1].

kappa (GAIRAT's geometry value, Zhang et al. ICLR 2021, reference-code semantics): at each iteration, before
the step, +1 if the current iterate is still classified correctly; so kappa in {0..K} and the final iterate is
never checked. It comes from logits the loop computes anyway.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from bench.attacks.losses import ce_loss, cw_loss

Norm = Literal["linf", "l2"]


class AttackResult(NamedTuple):
    x_adv: torch.Tensor
    kappa: torch.Tensor | None  # int64 (n,), None where the attack has no iterations to count


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Onto the eps-ball around x, then onto [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * torch.clamp(eps / _flat_norm(delta), max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def random_start(x: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Uniform in [-eps, eps] per pixel (L-inf, LRAT paper sec. 5.1); a random direction with a uniform
    radius in [0, eps] (L2)."""
    if norm == "linf":
        delta = (torch.rand_like(x) * 2 - 1) * eps
    else:
        d = torch.randn_like(x)
        delta = d / _flat_norm(d) * eps * torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device)
    return (x + delta).clamp(0.0, 1.0)


@dataclass(frozen=True)
class PGD:
    """Projected gradient descent (Madry et al. 2018) on CE or on the CW margin loss (Carlini & Wagner 2017).

    Defaults are the training attack of the LRAT/GAIRAT/MAIL code: 10 steps of eps/4, uniform random start.
    `steps=1, step_size=eps, random_start=False` is FGSM (Goodfellow et al. 2015) as an evaluation attack.
    """

    eps: float
    steps: int = 10
    step_size: float | None = None  # None: eps / 4
    loss: Literal["ce", "cw"] = "ce"
    cw_kappa: float = 0.0
    random_start: bool = True
    norm: Norm = "linf"

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        x = x.detach()
        alpha = self.eps / 4 if self.step_size is None else self.step_size
        x_adv = random_start(x, self.eps, self.norm) if self.random_start else x.clone()
        kappa = torch.zeros(len(y), dtype=torch.long, device=x.device)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                logits = model(x_adv)
                per_example = ce_loss(logits, y) if self.loss == "ce" else cw_loss(logits, y, self.cw_kappa)
                (grad,) = torch.autograd.grad(per_example.sum(), [x_adv])
            kappa += (logits.detach().argmax(1) == y).long()
            with torch.no_grad():
                if self.norm == "linf":
                    step = alpha * grad.sign()
                else:
                    step = alpha * grad / _flat_norm(grad)
                x_adv = project(x_adv.detach() + step, x, self.eps, self.norm)
        return AttackResult(x_adv.detach(), kappa)


@dataclass(frozen=True)
class FGSMRandomStart:
    """FGSM with a uniform random start (Wong, Rice & Kolter, ICLR 2020): one step of 1.25 eps.
    For cheap runs and tests; no kappa (a single step has nothing to count), so GAIRAT refuses it."""

    eps: float
    step_factor: float = 1.25

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        x = x.detach()
        x_adv = random_start(x, self.eps, "linf").requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(ce_loss(model(x_adv), y).sum(), [x_adv])
        with torch.no_grad():
            x_adv = project(x_adv + self.step_factor * self.eps * grad.sign(), x, self.eps, "linf")
        return AttackResult(x_adv.detach(), None)
