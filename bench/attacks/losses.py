"""Per-example losses and margins shared by attacks and methods. All computed in fp32 (even under autocast)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _other_max(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{i != y} z_i, per row."""
    masked = z.scatter(1, y[:, None], float("-inf"))
    return masked.max(dim=1).values


def prob_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """p_y - max_{k != y} p_k in [-1, 1] (MAIL's PM, LRAT's t in Eq. 11, SAA's merge key)."""
    p = logits.float().softmax(dim=1)
    return p.gather(1, y[:, None]).squeeze(1) - _other_max(p, y)


def cw_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 0.0) -> torch.Tensor:
    """Per-example CW loss -clamp(z_y - max_{i!=y} z_i + kappa, min=0), as in the CAT/GAIRAT code.
    Maximising it pushes the true-class logit below the best other one (until the margin reaches -kappa)."""
    z = logits.float()
    real = z.gather(1, y[:, None]).squeeze(1)
    return -torch.clamp(real - _other_max(z, y) + kappa, min=0.0)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


def kl_loss(logits_target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p(target) || p(logits)) = sum_k p_k (log p_k - log q_k), as `nn.KLDivLoss` computes it on
    (log_softmax(logits), softmax(logits_target)) in the TRADES code (a zero p_k contributes 0)."""
    return F.kl_div(F.log_softmax(logits.float(), dim=1), F.softmax(logits_target.float(), dim=1),
                    reduction="none").sum(dim=1)
