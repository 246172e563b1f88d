"""`kl`, TRADES' training attack (Zhang et al., ICML 2019; official code yaodongyu/TRADES, trades.py): PGD that
maximises KL(p(x) || p(x_adv)) from x + 0.001 N(0, I), K signed steps, each projected onto the eps-ball and
[0, 1]. It needs no label: it moves away from the model's own prediction at x. The caller sets eval mode
(trades.py calls model.eval() around it; the harness's `attack_bn_mode` default). kappa as for PGD (bench/attacks/
pgd.py): the iterates still classified correctly, before each step, from logits the loop computes anyway.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.attacks.losses import kl_loss
from bench.attacks.pgd import AttackResult, project

START_SD = 0.001  # trades.py: x_adv = x_natural + 0.001 * torch.randn(x_natural.shape)


@dataclass(frozen=True)
class KLPGD:
    eps: float
    steps: int = 10
    step_size: float | None = None  # None: eps / 4

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        x = x.detach()
        alpha = self.eps / 4 if self.step_size is None else self.step_size
        with torch.no_grad():
            target = model(x).float()  # p(x): constant over the loop (trades.py recomputes it, in eval mode)
        x_adv = x + START_SD * torch.randn_like(x)  # unclamped, as trades.py: the first step projects it
        kappa = torch.zeros(len(y), dtype=torch.long, device=x.device)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                logits = model(x_adv)
                (grad,) = torch.autograd.grad(kl_loss(target, logits).sum(), [x_adv])
            kappa += (logits.detach().argmax(1) == y).long()
            with torch.no_grad():
                x_adv = project(x_adv.detach() + alpha * grad.sign(), x, self.eps, "linf")
        return AttackResult(project(x_adv.detach(), x, self.eps, "linf"), kappa)
