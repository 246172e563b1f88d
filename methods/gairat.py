"""`gairat` (alias `irat`): geometry-aware instance-reweighted AT (Zhang et al., ICLR 2021; official code,
zjfheart/Geometry-aware-Instance-reweighted-Adversarial-Training, GAIRAT.py and GAIR.py).

w_i = (1 + tanh(lam + 5 (floor(K/2) - kappa_i) / floor(K/2))) / 2, normalised per mini-batch to mean 1;
loss = (1/n) sum_i w_i CE(f(x_adv_i), y_i), adversarial term only. lam = -1 (`--Lambda`), `fixed` schedule.

Burn-in: plain AT for the first 59 of GAIRAT.py's 120 epochs. It reweights when `(epoch + 1) >=
args.begin_epoch` (begin_epoch 60, `epoch` 0-based), and its `adjust_Lambda(epoch + 1)` keeps lam = +inf
(weights 1) until `epoch >= 60` on that 1-based count: both switch at 0-based epoch 59. Other run lengths
scale the fraction 59/120 (`methods.base.first_reweighted_epoch`: nearest epoch, halves up). [choice] The
official begin_epoch is an absolute epoch (60 whatever --epochs); `burn_in=0.59` gives 59 at 100 epochs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.config.catalog import method_defaults
from methods.base import StepContext, WeightedCE, reweighting_started


def gairat_weights(kappa: torch.Tensor, num_steps: int, lam: float) -> torch.Tensor:
    """GAIRAT's Tanh weights for per-example kappa in {0..K}, normalised to mean 1 over the batch.
    Uses floor(K/2) as the official code does (so odd K behave as there). lam = +inf gives all ones.
    K < 2 is refused: floor(K/2) = 0 would divide by zero (NaN weights)."""
    if num_steps < 2:
        raise ValueError(f"GAIRAT needs at least 2 attack steps (its weights divide by floor(K/2)), "
                         f"got K = {num_steps}")
    half = num_steps // 2
    w = (torch.tanh(lam + (half - kappa.double()) * 5.0 / half) + 1.0) / 2.0
    return (w * len(w) / w.sum()).float().detach()


_DEFAULTS = method_defaults("gairat")  # bench/config/catalog.py, with their sources


@dataclass(frozen=True)
class GAIRATParams:
    lam: float = _DEFAULTS["lam"]  # GAIRAT.py --Lambda
    burn_in: float = _DEFAULTS["burn_in"]  # fraction trained with plain AT (GAIRAT.py: 0-based epochs 0..58 of 120)


class GAIRAT(WeightedCE):
    name = "gairat"
    Params = GAIRATParams

    def weights(self, logits_adv, y, adv, attack, ctx: StepContext):
        if not reweighting_started(ctx.epoch, ctx.epochs, self.params.burn_in):
            return None  # = lam +inf before the switch (GAIRAT.py adjust_Lambda): weights 1, plain AT
        return gairat_weights(adv.kappa, attack.steps, self.params.lam).to(logits_adv.device)
