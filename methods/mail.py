"""`mail`: margin-aware instance reweighting, MAIL-AT variant (Wang, Liu et al., NeurIPS 2021; official code,
QizhouWang/MAIL, train.py and mail_loss.py).

PM_i = p_y(x_adv_i) - max_{k!=y} p_k(x_adv_i) on the (train-mode, detached) adversarial logits;
w_i = 3 sigmoid(slope (-PM_i + bias)), slope 1.0 and bias -1.5: train.py's `--slope` and `--bias` defaults
(mail_loss.py: `((pm + bias) * slope).sigmoid() * 3`, with its pm = max_other - p_y = -PM). Not
batch-normalised: the official code multiplies by a fixed 3. An earlier version of this project used slope 10,
bias -0.5 (no official source found): `--method-param mail.slope=10 --method-param mail.bias=-0.5`.

Burn-in: train.py trains plain AT while `epoch <= 75` (0-based, 120 epochs), so MAIL reweights from 0-based
epoch 76: burn_in = 76/120, scaled for other lengths by `methods.base.first_reweighted_epoch` (nearest epoch,
halves up). The repository's other train.py version starts MAIL at `range(75, epochs)` from an AT checkpoint
saved at epoch 70: `burn_in=0.625` gives 75 at 120 epochs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.attacks.losses import prob_margin
from bench.config.catalog import method_defaults
from methods.base import StepContext, WeightedCE, reweighting_started


_DEFAULTS = method_defaults("mail")  # bench/config/catalog.py, with their sources


def mail_weights(logits_adv: torch.Tensor, y: torch.Tensor, slope: float = _DEFAULTS["slope"],
                 bias: float = _DEFAULTS["bias"]) -> torch.Tensor:
    """MAIL-AT weights 3 sigmoid(slope (-PM + bias)) for adversarial logits (n, K); detached. Defaults: MAIL
    train.py (`--slope 1.0 --bias -1.5`)."""
    pm = prob_margin(logits_adv.detach(), y)
    return (3.0 * torch.sigmoid(slope * (-pm + bias))).detach()


@dataclass(frozen=True)
class MAILParams:
    slope: float = _DEFAULTS["slope"]  # MAIL train.py --slope
    bias: float = _DEFAULTS["bias"]  # MAIL train.py --bias
    burn_in: float = _DEFAULTS["burn_in"]  # fraction trained with plain AT (train.py: `epoch <= 75` of 120)


class MAIL(WeightedCE):
    name = "mail"
    Params = MAILParams

    def weights(self, logits_adv, y, adv, attack, ctx: StepContext):
        if not reweighting_started(ctx.epoch, ctx.epochs, self.params.burn_in):
            return None
        return mail_weights(logits_adv, y, self.params.slope, self.params.bias)
