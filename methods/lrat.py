"""`lrat`: locally reweighted adversarial training (Gao, Liu, Zhou, Niu, Han, Cheng; ICLR 2022 version).

For m training attacks j (m = 1 for `cw`, 2 for `saa+cw`), per instance i:
  t_ij = p_y(x_ij) - max_{k!=y} p_k(x_ij)                    (Eq. 11, detached, in [-1, 1])
  w_ij = alpha (1 - t_ij)^beta, alpha = 2, beta = 0.5         (Eq. 12)
  loss = (1/n) sum_i ([C - sum_j w_ij]_+ CE(x*_i) + sum_j w_ij CE(x_ij)),  C = 0.1   (Eq. 7)
then every coefficient of the batch is divided by one shared Z = mean_i([C - sum_j w_ij]_+ + sum_j w_ij)
(Eq. 15), so the mean per-instance total is 1: weights move only inside each (instance, variants) pair, and
no instance is dropped. [choice] x* (the anchor) is the natural x by default (`anchor=pgd|saa` attack it);
[choice] t comes from the train-mode logits used for the loss, as MAIL does; [choice] the anchor pass
covers only the instances whose weights sum below C, in the attack's BN mode, after the main backward
(see `LRAT._anchor_term`).

`lsat` ("locally simulated AT") is the same objective with all w = 1: for one attack it equals `at`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.losses import ce_loss, prob_margin
from methods.base import Method, StepContext, StepOutput, in_bn_mode, run_attack


def lrat_unnormalised(logits_variants: list[torch.Tensor], y: torch.Tensor, alpha: float = 2.0,
                      beta: float = 0.5, C: float = 0.1, weighting: str = "lrat"):
    """Eq. 11, 12 and the anchor coefficient of Eq. 7, before the Eq. 15 rescale: ([C - sum_j w]_+, w)."""
    t = torch.stack([prob_margin(z.detach(), y) for z in logits_variants], dim=1)
    w = torch.ones_like(t) if weighting == "none" else alpha * (1.0 - t).clamp_min(0.0).pow(beta)
    return (C - w.sum(dim=1)).clamp_min(0.0), w


def lrat_coefficients(logits_variants: list[torch.Tensor], y: torch.Tensor, alpha: float = 2.0,
                      beta: float = 0.5, C: float = 0.1, weighting: str = "lrat"):
    """(anchor_coef (n,), variant_coefs (n, m)) after the Eq. 15 rescale by one shared scalar; detached.
    `weighting='none'` sets every w_ij = 1 (LSAT)."""
    anchor, w = lrat_unnormalised(logits_variants, y, alpha, beta, C, weighting)
    z = (anchor + w.sum(dim=1)).mean()
    return (anchor / z).detach(), (w / z).detach()


@dataclass(frozen=True)
class LRATParams:
    alpha: float = 2.0
    beta: float = 0.5
    C: float = 0.1
    anchor: str = "natural"  # [choice] natural | pgd | saa
    weighting: str = "lrat"  # lrat | none (= LSAT)

    def __post_init__(self):
        if self.anchor not in ("natural", "pgd", "saa"):
            raise ValueError(f"anchor must be natural, pgd or saa, got {self.anchor!r}")
        if self.weighting not in ("lrat", "none"):
            raise ValueError(f"weighting must be lrat or none, got {self.weighting!r}")
        if self.C < 0 or self.alpha < 0 or self.beta < 0:
            raise ValueError("alpha, beta and C must be >= 0")


@dataclass(frozen=True)
class LSATParams(LRATParams):
    weighting: str = "none"


class LRAT(Method):
    name = "lrat"
    summary = "local reweighting inside each (instance, variants) pair (Gao et al. ICLR 2022), alpha=2 beta=0.5 C=0.1"
    Params = LRATParams
    max_attacks = 8

    def loss(self, model, x, y, ctx: StepContext) -> StepOutput:
        p = self.params
        variants = [run_attack(model, a, x, y, ctx.bn_mode).x_adv for a in ctx.attacks]
        logits = [model(v) for v in variants]
        anchor_coef, coefs = lrat_coefficients(logits, y, p.alpha, p.beta, p.C, p.weighting)
        per_example = sum(coefs[:, j] * ce_loss(z, y) for j, z in enumerate(logits))
        needs_anchor = anchor_coef > 0
        weights = None if p.weighting == "none" else coefs.flatten()
        return StepOutput(per_example.mean(), weights, {"anchor_share": needs_anchor.float().mean()},
                          deferred=self._anchor_term(model, x, y, ctx, anchor_coef, needs_anchor))

    def _anchor_term(self, model, x, y, ctx: StepContext, anchor_coef, needs_anchor):
        """(1/n) sum_i [C - sum_j w_ij]_+ CE(x*_i), deferred (StepOutput.deferred) because which i need it is
        known only on the device. [choice] Computed only for the instances that need it (sum_j w_ij < C: for one
        attack at the defaults, t > 0.9975, a few per batch at most), in the attack's BN mode: a handful of
        inputs then neither sets the batch statistics of a train-mode pass nor moves the running ones, and the
        extra pass costs k/n of a step instead of a whole one. Never needed for LSAT, so LSAT-pgd == AT."""
        p, n = self.params, len(y)
        # The mask goes to the host asynchronously; an event marks its arrival. Waiting for it later waits for
        # this batch's forward only, not for the backward queued in between: the GPU's queue never drains.
        ready = None
        if needs_anchor.is_cuda:
            mask = torch.empty(n, dtype=torch.bool, pin_memory=True).copy_(needs_anchor, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        else:
            mask = needs_anchor
        amp = (torch.is_autocast_enabled(x.device.type), torch.get_autocast_dtype(x.device.type))

        def anchor_term():
            if ready is not None:
                ready.synchronize()
            need = mask.nonzero().squeeze(1)
            k = len(need)
            if not k:
                return None
            # Padded to a power of two by repeating an index (coefficient 0): each new input shape would make
            # cuDNN autotune and torch.compile recompile; eval-mode BN keeps the copies from touching the rest.
            pad = (1 << (k - 1).bit_length()) - k if ctx.bn_mode == "eval" else 0
            need = torch.cat([need, need[:1].expand(pad)])
            # From pinned memory, non-blocking: a pageable copy would wait for the queued backward to finish.
            need = (need.pin_memory() if x.is_cuda else need).to(x.device, non_blocking=True)
            coef = torch.cat([anchor_coef[need[:k]], anchor_coef.new_zeros(pad)])
            xs, ys = x[need], y[need]
            with torch.autocast(x.device.type, dtype=amp[1], enabled=amp[0]):
                x_star = xs if p.anchor == "natural" else run_attack(model, ctx.make_attack(p.anchor), xs, ys, ctx.bn_mode).x_adv
                with in_bn_mode(model, ctx.bn_mode):
                    anchor_loss = ce_loss(model(x_star), ys)
            return (coef * anchor_loss).sum() / n

        return anchor_term


class LSAT(LRAT):
    name = "lsat"
    summary = "LRAT's locally simulated AT: the LRAT objective with all weights 1 (equals AT for one attack)"
    Params = LSATParams
