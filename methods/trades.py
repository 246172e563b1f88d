"""`trades` (Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan; ICML 2019; official code yaodongyu/TRADES, trades.py):

  loss = (1/n) sum_i CE(f(x_i), y_i) + beta (1/n) sum_i KL(p(x_i) || p(x_adv_i)),   beta = 6

with x_adv from its own training attack `kl` (bench/attacks/kl.py). Both terms are computed in train mode and
the gradient flows through both distributions of the KL, as in trades.py (`nn.KLDivLoss` on log_softmax(f(x_adv))
and softmax(f(x)), neither detached). trades.py runs f(x) twice in train mode with identical outputs; one pass
here gives the same loss and gradients (BN's running statistics move once instead of twice).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.attacks.losses import kl_loss
from bench.config.catalog import method_defaults
from methods.base import NaturalAndAdversarial

_DEFAULTS = method_defaults("trades")  # bench/config/catalog.py, with their sources


def trades_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
                beta: float = _DEFAULTS["beta"]) -> torch.Tensor:
    """CE(f(x), y) + beta * (1/n) sum_i KL(p(x_i) || p(x_adv_i)), a scalar (mean over the batch)."""
    return F.cross_entropy(logits_nat.float(), y) + beta * kl_loss(logits_nat, logits_adv).mean()


@dataclass(frozen=True)
class TRADESParams:
    beta: float = _DEFAULTS["beta"]


class TRADES(NaturalAndAdversarial):
    name = "trades"
    Params = TRADESParams
    objective = staticmethod(trades_loss)
