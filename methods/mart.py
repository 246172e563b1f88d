"""`mart` (Wang, Zou, Yi, Bailey, Ma, Gu; ICLR 2020; official code YisenWang/MART, mart.py): misclassification-
aware AT. With p = softmax, x_adv from the run's training attack (CE-PGD in the paper) and y'_i the most likely
wrong class under x_adv_i:

  loss = (1/n) sum_i [CE(f(x_adv_i), y_i) - log(1.0001 - p_y'_i(x_adv_i) + 1e-12)]                 (BCE)
         + beta (1/n) sum_i KL(p(x_i) || p(x_adv_i)) (1.0000001 - p_y_i(x_i)),   beta = 6

The constants are mart.py's: 1.0001 and 1e-12 inside the log, 1e-12 inside the KL's log of p(x_adv) (as
`nn.KLDivLoss` gets it), 1.0000001 in the weight. The weight (1 - p_y(x)) is not detached (mart.py keeps its
gradient). [choice] mart.py starts its PGD at x + 0.001 N(0, I); the harness's `pgd` starts uniformly in the
eps-ball (the LRAT paper's setting for every method), so all methods here share one training attack.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.config.catalog import method_defaults
from methods.base import NaturalAndAdversarial

_DEFAULTS = method_defaults("mart")  # bench/config/catalog.py, with their sources


def mart_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
              beta: float = _DEFAULTS["beta"]) -> torch.Tensor:
    """MART's objective (module docstring) as mart.py computes it, a scalar."""
    logits_nat, logits_adv = logits_nat.float(), logits_adv.float()
    adv_probs = F.softmax(logits_adv, dim=1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])  # the most likely class other than y
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), wrong)
    nat_probs = F.softmax(logits_nat, dim=1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(dim=1)
    return loss_adv + beta * (kl * (1.0000001 - true_probs)).mean()


@dataclass(frozen=True)
class MARTParams:
    beta: float = _DEFAULTS["beta"]


class MART(NaturalAndAdversarial):
    name = "mart"
    Params = MARTParams
    objective = staticmethod(mart_loss)
