"""`lrat`: locally reweighted adversarial training (Gao, Liu, Zhou, Niu, Han, Cheng; ICLR 2022 version).

For m training attacks j (m = 1 for `cw`, 2 for `saa+cw`), per instance i:
  t_ij = p_y(x_ij) - max_{k!=y} p_k(x_ij)                    (Eq. 11, detached, in [-1, 1])
  w_ij = alpha (1 - t_ij)^beta, alpha = 2, beta = 0.5         (Eq. 12)
  loss = (1/n) sum_i ([C - sum_j w_ij]_+ CE(x*_i) + sum_j w_ij CE(x_ij)),  C = 0.1   (Eq. 7)
then every coefficient of the batch is divided by one shared Z = mean_i([C - sum_j w_ij]_+ + sum_j w_ij)
(Eq. 15), so the mean per-instance total is 1: weights move only inside each (instance, variants) pair, and
no instance is dropped. [choice] x* (the anchor) is the natural x by default (`anchor=pgd|saa` attack it);
[choice] t comes from the train-mode logits used for the loss, as MAIL does; [choice] `anchor_bn`: the anchor
pass runs after the main backward, by default (`eval`) over only the instances whose weights sum below C with
BN in eval mode (running statistics, never updated), whatever `attack_bn_mode` is; `batch` runs it over the
whole batch in train mode, like the variants' passes (see `LRAT._anchor_term`). Train-mode BN never sees a
subset of the batch.

History: `weights` are the variant coefficients after Eq. 15 (n*m values); `relative_weights` the per-instance
totals [C - sum_j w_ij]_+ + sum_j w_ij after Eq. 15, divided by their batch mean (which Eq. 15 makes 1).

Table 2's ablation (`gd_attack=pgd`): the PGD variant's w is GAIRAT's geometry weight from its kappa instead of
Eq. 12 (`_gd_weights`); the other variants keep Eq. 12, and the anchor and Eq. 15 treat it like any w.
`train_attack=pgd+cw` is "GD+CW", `pgd+saa` "GD+SAA", `saa+cw+pgd` "SAA+CW+GD".

`lsat` ("locally simulated AT") is the same objective with all w = 1: for one attack it equals `at`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from bench.attacks.losses import ce_loss, prob_margin
from bench.config.catalog import method_defaults
from methods.base import Method, StepContext, StepOutput, in_bn_mode, run_attack
from methods.deferred import deferred_masked_term
from methods.gairat import gairat_weights


_DEFAULTS = method_defaults("lrat")  # bench/config/catalog.py: values, valid choices and sources
GD_LAMBDA = method_defaults("gairat")["lam"]  # Table 2's GD weight: GAIRAT's own lam


def lrat_unnormalised(logits_variants: list[torch.Tensor], y: torch.Tensor, alpha: float = _DEFAULTS["alpha"],
                      beta: float = _DEFAULTS["beta"], C: float = _DEFAULTS["C"],
                      weighting: str = _DEFAULTS["weighting"], fixed: Mapping[int, torch.Tensor] | None = None):
    """Eq. 11, 12 and the anchor coefficient of Eq. 7, before the Eq. 15 rescale: ([C - sum_j w]_+, w).
    `fixed`: variant index -> (n,) weights that replace Eq. 12 for that variant (Table 2's GD)."""
    t = torch.stack([prob_margin(z.detach(), y) for z in logits_variants], dim=1)
    w = torch.ones_like(t) if weighting == "none" else alpha * (1.0 - t).clamp_min(0.0).pow(beta)
    for j, wj in (fixed or {}).items():
        w[:, j] = wj.to(w)
    return (C - w.sum(dim=1)).clamp_min(0.0), w


def lrat_coefficients(logits_variants: list[torch.Tensor], y: torch.Tensor, alpha: float = _DEFAULTS["alpha"],
                      beta: float = _DEFAULTS["beta"], C: float = _DEFAULTS["C"],
                      weighting: str = _DEFAULTS["weighting"], fixed: Mapping[int, torch.Tensor] | None = None):
    """(anchor_coef (n,), variant_coefs (n, m)) after the Eq. 15 rescale by one shared scalar; detached.
    `weighting='none'` sets every w_ij = 1 (LSAT); `fixed` replaces some variants' Eq. 12 weights."""
    anchor, w = lrat_unnormalised(logits_variants, y, alpha, beta, C, weighting, fixed)
    z = (anchor + w.sum(dim=1)).mean()
    return (anchor / z).detach(), (w / z).detach()


@dataclass(frozen=True)
class LRATParams:
    alpha: float = _DEFAULTS["alpha"]
    beta: float = _DEFAULTS["beta"]
    C: float = _DEFAULTS["C"]
    anchor: str = _DEFAULTS["anchor"]  # [choice] natural | pgd | saa
    weighting: str = _DEFAULTS["weighting"]  # lrat | none (= LSAT)
    anchor_bn: str = _DEFAULTS["anchor_bn"]  # [choice] eval | batch: BN of the anchor pass
    gd_attack: str = _DEFAULTS["gd_attack"]  # none | pgd | cw: that variant takes GAIRAT's GD weight (Table 2)


@dataclass(frozen=True)
class LSATParams(LRATParams):
    weighting: str = method_defaults("lsat")["weighting"]


class LRAT(Method):
    name = "lrat"
    Params = LRATParams

    def loss(self, model, x, y, ctx: StepContext) -> StepOutput:
        p = self.params
        results = [run_attack(model, a, x, y, ctx.bn_mode) for a in ctx.attacks]
        logits = [model(r.x_adv) for r in results]
        anchor_coef, coefs = lrat_coefficients(logits, y, p.alpha, p.beta, p.C, p.weighting,
                                               self._gd_weights(results, ctx))
        per_example = sum(coefs[:, j] * ce_loss(z, y) for j, z in enumerate(logits))
        needs_anchor = anchor_coef > 0
        weights = relative = None
        if p.weighting != "none":
            weights = coefs.flatten()
            totals = anchor_coef + coefs.sum(dim=1)
            relative = totals / totals.mean()
        return StepOutput(per_example.mean(), weights, {"anchor_share": needs_anchor.float().mean()},
                          deferred=self._anchor_term(model, x, y, ctx, anchor_coef, needs_anchor),
                          relative_weights=relative)

    def _gd_weights(self, results, ctx: StepContext) -> dict[int, torch.Tensor]:
        """Table 2's GD: the `gd_attack` variant weighted by GAIRAT's Tanh weight of its kappa, normalised to mean
        1 over the batch as GAIRAT trains with it, lam = GAIRAT's -1. [choice] From the first epoch: LRAT has
        no burn-in, and the paper names none for the mixture."""
        if self.params.gd_attack not in ctx.attack_names:
            return {}
        j = ctx.attack_names.index(self.params.gd_attack)
        return {j: gairat_weights(results[j].kappa, ctx.attacks[j].steps, GD_LAMBDA)}

    def _anchor_term(self, model, x, y, ctx: StepContext, anchor_coef, needs_anchor):
        """(1/n) sum_i [C - sum_j w_ij]_+ CE(x*_i), deferred (StepOutput.deferred) because which i need it is
        known only on the device (sum_j w_ij < C: for one attack at the defaults, t > 0.9975, a few per batch at
        most). [choice] `anchor_bn`:
        - `eval` (default): only the needing instances, with the model in eval mode for the anchor attack (if
          any) and the forward: BN uses its running statistics and does not update them, whatever
          `attack_bn_mode` is (train-mode BN over a handful of inputs would take its batch statistics from
          them and move the running ones); the pass costs k/n of a step;
        - `batch`: the whole batch in train mode, like the variants' passes (batch statistics of all n inputs;
          running statistics move as in any train-mode forward), instances that do not need it with
          coefficient 0; the anchor attack runs in `attack_bn_mode`. Costs a whole extra forward/backward.
        Skipped when no instance needs it; never needed for LSAT, so LSAT-pgd == AT."""
        p = self.params
        whole_batch = p.anchor_bn == "batch"
        attack_mode, pass_mode = (ctx.bn_mode, "train") if whole_batch else ("eval", "eval")

        def anchor_ce(index: torch.Tensor) -> torch.Tensor:
            xs, ys = x[index], y[index]
            x_star = xs if p.anchor == "natural" else run_attack(model, ctx.make_attack(p.anchor), xs, ys, attack_mode).x_adv
            with in_bn_mode(model, pass_mode):
                return ce_loss(model(x_star), ys)

        return deferred_masked_term(needs_anchor, anchor_coef, anchor_ce, whole_batch=whole_batch)


class LSAT(LRAT):
    name = "lsat"
    Params = LSATParams
