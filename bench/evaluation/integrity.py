"""Every adversarial example checked before its flags count (issue 24, item 1): per batch, x_adv has x's shape,
dtype and device, is finite, lies in [0, 1] and within eps of x in the run's threat model (plus a stated
tolerance). The largest perturbation seen is kept for the row (`max_perturbation`, what AutoAttack prints as
"max Linf perturbation"). A violation raises AdversarialViolation (a GuardFailure: `bench eval` refuses the
run, `bench run` fails the cell) naming the attack, the batch and the norm found; nothing is stored for it.

Model outputs met while the flags are computed are checked too (`checked_logits`): a NaN logit's argmax is an
index like any other, so a NaN model would otherwise count as robust on every point of that class.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.evaluation.guards import GuardFailure

# L-inf: absolute slack on eps, the one AutoAttack's and RobustBench's own checks allow (float32 rounding of
# x + clamp(x_adv - x, -eps, eps) is about 6e-8, so 1e-5 never refuses a projection and always a real step out).
LINF_ATOL = 1e-5
# L2: relative slack on eps (the norm of a float32 delta over d = 3072 pixels carries ~1e-6 relative rounding;
# FAB's and APGD's L2 projections land within it), plus the L-inf slack for eps = 0.
L2_RTOL = 1e-4
NORM_LABEL = {"linf": "L-inf", "l2": "L2"}


class AdversarialViolation(GuardFailure):
    """An attack returned something that is not an adversarial example of the threat model."""


def allowed(eps: float, threat_model: str) -> float:
    """The largest perturbation accepted for budget `eps`."""
    return eps + LINF_ATOL if threat_model == "linf" else eps * (1 + L2_RTOL) + LINF_ATOL


def perturbation(x: torch.Tensor, x_adv: torch.Tensor, threat_model: str) -> torch.Tensor:
    """Per-example ||x_adv - x|| in the threat model's norm, in float64."""
    delta = (x_adv.detach().double() - x.detach().double()).flatten(1)
    return delta.abs().amax(1) if threat_model == "linf" else delta.norm(dim=1)


@dataclass
class BallCheck:
    """The check of one attack's batches; `largest`: the largest perturbation seen so far (0 before any)."""

    attack: str
    eps: float
    threat_model: str
    largest: float = 0.0

    def __call__(self, x: torch.Tensor, result, where: str) -> torch.Tensor:
        """x_adv of `result` (an AttackResult or, AutoAttack, the tensor itself) for the batch `x`, checked;
        `where` names the batch in the message ("batch 2 of 3: 32 points at test positions 64-127")."""
        x_adv = result if isinstance(result, torch.Tensor) else getattr(result, "x_adv", None)
        if not isinstance(x_adv, torch.Tensor):
            self._refuse(where, f"returned a {type(result).__name__}, not an AttackResult(x_adv, kappa) holding a "
                                "tensor")
        if x_adv.shape != x.shape or x_adv.dtype != x.dtype or x_adv.device != x.device:
            self._refuse(where, f"returned x_adv of shape {tuple(x_adv.shape)}, {x_adv.dtype} on {x_adv.device} "
                                f"for inputs of shape {tuple(x.shape)}, {x.dtype} on {x.device}: one adversarial "
                                "example per input, in the input's dtype and device")
        if not bool(torch.isfinite(x_adv).all()):
            bad = int((~torch.isfinite(x_adv)).sum())
            self._refuse(where, f"returned {bad} non-finite (NaN or infinite) values in x_adv")
        lo, hi = x_adv.min().item(), x_adv.max().item()
        if lo < 0.0 or hi > 1.0:
            self._refuse(where, f"returned x_adv spanning [{lo:.6g}, {hi:.6g}], outside the image range [0, 1]")
        found = perturbation(x, x_adv, self.threat_model).max().item() if len(x) else 0.0
        if found > allowed(self.eps, self.threat_model):
            tol = f"{LINF_ATOL:g}" if self.threat_model == "linf" else f"{L2_RTOL:g} eps + {LINF_ATOL:g}"
            self._refuse(where, f"left the {NORM_LABEL[self.threat_model]} ball: max perturbation {found:.6g} > "
                                f"eps {self.eps:.6g} (tolerance {tol})")
        self.largest = max(self.largest, found)
        return x_adv

    def _refuse(self, where: str, what: str) -> None:
        raise AdversarialViolation(
            f"Evaluation attack '{self.attack}' {what} on {where}. Nothing is stored for '{self.attack}': an "
            f"attack must return, for each input, an image in [0, 1] within eps of it "
            f"({NORM_LABEL[self.threat_model]}, eps {self.eps:.6g}).")


def batch_label(b: int, n_batches: int, positions: torch.Tensor) -> str:
    """How a message names a batch: its number and the test positions (0-based, in evaluated order) it holds."""
    if not len(positions):
        return f"batch {b + 1} of {n_batches} (empty)"
    first, last = int(positions.min()), int(positions.max())
    return f"batch {b + 1} of {n_batches}: {len(positions)} points at test positions {first}-{last}"


def checked_logits(logits, n: int, where: str) -> torch.Tensor:
    """The model's output on a batch of `n` inputs, refused unless a finite (n, classes) tensor."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        got = f"shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else f"a {type(logits).__name__}"
        raise GuardFailure(f"The model returned {got} for {n} inputs on {where}; expected logits of shape ({n}, "
                           f"classes). Nothing is stored for it.")
    if not bool(torch.isfinite(logits).all()):
        raise GuardFailure(f"The model returned non-finite logits (NaN or infinite) on {where}: its predictions "
                           f"there are meaningless, so nothing is stored for it.")
    return logits
