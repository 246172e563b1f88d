"""`gairat` (alias `irat`): geometry-aware instance-reweighted AT (Zhang et al., ICLR 2021; official code).

w_i = (1 + tanh(lam + 5 (floor(K/2) - kappa_i) / floor(K/2))) / 2, normalised per mini-batch to mean 1;
loss = (1/n) sum_i w_i CE(f(x_adv_i), y_i), adversarial term only; plain AT during the burn-in (official:
60 of 120 epochs; here a fraction of the run, [choice] 0.5). lam = -1 with the official `fixed` schedule.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.base import StepContext, WeightedCE, reweighting_started


def gairat_weights(kappa: torch.Tensor, num_steps: int, lam: float) -> torch.Tensor:
    """GAIRAT's Tanh weights for per-example kappa in {0..K}, normalised to mean 1 over the batch.
    Uses floor(K/2) as the official code does (so odd K behave as there). lam = +inf gives all ones."""
    half = num_steps // 2
    w = (torch.tanh(lam + (half - kappa.double()) * 5.0 / half) + 1.0) / 2.0
    return (w * len(w) / w.sum()).float().detach()


@dataclass(frozen=True)
class GAIRATParams:
    lam: float = -1.0
    burn_in: float = 0.5  # [choice] fraction of the run trained with plain AT (official: 60/120)

    def __post_init__(self):
        if not 0.0 <= self.burn_in <= 1.0:
            raise ValueError(f"burn_in must be a fraction in [0, 1], got {self.burn_in}")


class GAIRAT(WeightedCE):
    name = "gairat"
    summary = "geometry-aware instance reweighting from kappa (Zhang et al. ICLR 2021), lam=-1, burn-in 50%"
    Params = GAIRATParams
    needs_kappa = True

    def weights(self, logits_adv, y, adv, attack, ctx: StepContext):
        if not reweighting_started(ctx.epoch, ctx.epochs, self.params.burn_in):
            return None
        return gairat_weights(adv.kappa, attack.steps, self.params.lam).to(logits_adv.device)
