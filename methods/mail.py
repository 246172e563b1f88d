"""`mail`: margin-aware instance reweighting, MAIL-AT variant (Wang, Liu et al., NeurIPS 2021; official code).

PM_i = p_y(x_adv_i) - max_{k!=y} p_k(x_adv_i) on the (train-mode, detached) adversarial logits;
w_i = 3 sigmoid(slope (-PM_i + bias)), slope 10, bias -0.5. Not batch-normalised: the official code multiplies
by a fixed 3. Plain AT during the burn-in (official: 75 of 120 epochs; here [choice] 0.625 of the run).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.losses import prob_margin
from methods.base import StepContext, WeightedCE, reweighting_started


def mail_weights(logits_adv: torch.Tensor, y: torch.Tensor, slope: float = 10.0, bias: float = -0.5) -> torch.Tensor:
    """MAIL-AT weights 3 sigmoid(slope (-PM + bias)) for adversarial logits (n, K); detached."""
    pm = prob_margin(logits_adv.detach(), y)
    return (3.0 * torch.sigmoid(slope * (-pm + bias))).detach()


@dataclass(frozen=True)
class MAILParams:
    slope: float = 10.0
    bias: float = -0.5
    burn_in: float = 0.625  # [choice] official: reweighting after epoch 75 of 120

    def __post_init__(self):
        if not 0.0 <= self.burn_in <= 1.0:
            raise ValueError(f"burn_in must be a fraction in [0, 1], got {self.burn_in}")


class MAIL(WeightedCE):
    name = "mail"
    summary = "probabilistic-margin instance reweighting, MAIL-AT (Wang et al. NeurIPS 2021), burn-in 62.5%"
    Params = MAILParams

    def weights(self, logits_adv, y, adv, attack, ctx: StepContext):
        if not reweighting_started(ctx.epoch, ctx.epochs, self.params.burn_in):
            return None
        return mail_weights(logits_adv, y, self.params.slope, self.params.bias)
