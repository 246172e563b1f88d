"""Guards against the classic evaluation mistakes (docs/methods.md sec. 4; the RobustBench and AutoAttack trackers).

Each guard gives a `GuardResult` that lands in every result row as a column `guard_<name>`, whose value is
"ok", "flag: <why>" or "skip: <why>"; `guards_flagged` lists the flagged names. A guard either *refuses*
(raises before anything is computed or written) or *flags* (the number is stored, with the flag beside it):

| guard | refuses | flags |
|---|---|---|
| eval_mode | any module with `training=True` (BN batch statistics, live dropout) | - |
| input_range | inputs outside [0, 1] (normalisation outside the model, eps in the wrong units) | - |
| eps | eps < 0; L-inf eps > 1; L2 eps > sqrt(d) (the input cube's diameter) | L-inf > 0.3; L2 > 0.1 sqrt(d) |
| outputs | logits that are not a finite (batch, classes) tensor (classes: the dataset's) | - |
| deterministic | - | two forward passes on the same batch differ |
| logits | - | outputs are probability rows (in [0, 1], summing to 1) |
| zero_grad | logits with no gradient path from the input | points whose input gradient of CE is exactly zero |
| autoattack | - | any warning AutoAttack's own checks (checks.py) logged during the run |
| monotone | - | accuracy rises with attack strength beyond binomial noise (natural >= fgsm >= pgd20 >= aa) |
| square | - | Square breaks more than 0.2% of points that stored APGD-CE/APGD-T/FAB-T all missed (check_square_sr) |

Every adversarial example is checked as well, batch by batch, against x and eps (bench/evaluation/integrity.py:
an attack leaving the threat model is refused like a guard, with AdversarialViolation).

Why refuse train mode instead of switching to eval: a hidden mode switch is exactly the bug class this
guards against (torchattacks does it silently); the harness's own `load_run` always returns an eval-mode model,
so only a caller's mistake can trip it, and the caller should fix it where it happens.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from bench.config.configs import check_budget

Status = Literal["ok", "flag", "skip"]
MODEL_GUARDS = ("eval_mode", "input_range", "eps", "outputs", "deterministic", "logits", "zero_grad")
ALL_GUARDS = MODEL_GUARDS + ("autoattack", "monotone", "square")

LINF_SUSPICIOUS = 0.3  # the largest standard L-inf budget (MNIST); anything above is likely a unit mistake
L2_SUSPICIOUS = 0.1  # times sqrt(d): 2.8 on 28x28, 5.5 on CIFAR; the usual budgets are 1.5-3 and 0.5
MONOTONE_Z = 2.0  # one-sided ~97.7% binomial tolerance [choice]
SQUARE_ALPHA = 0.002  # AutoAttack's check_square_sr threshold (0.2% of the points)


class GuardFailure(RuntimeError):
    """The evaluation would be wrong, so it is refused; the message says what to fix."""


@dataclass(frozen=True)
class GuardResult:
    name: str
    status: Status
    detail: str = ""

    @property
    def value(self) -> str:
        return self.status if self.status == "ok" else f"{self.status}: {self.detail}"


def columns(results: Sequence[GuardResult]) -> dict[str, str]:
    """Result-row columns: `guard_<name>` per guard and `guards_flagged` (comma-separated names)."""
    cols = {f"guard_{r.name}": r.value for r in results}
    cols["guards_flagged"] = ",".join(r.name for r in results if r.status == "flag")
    return cols


def merge_columns(rows: Sequence[Mapping]) -> dict[str, str]:
    """Guard columns for a row derived from several (the `worst` row): a flag anywhere stays a flag."""
    rank = {"flag": 2, "ok": 1, "skip": 0}
    merged: dict[str, str] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("guard_") and isinstance(value, str):
                old = merged.get(key)
                if old is None or rank[value.split(":")[0]] > rank[old.split(":")[0]]:
                    merged[key] = value
    merged["guards_flagged"] = ",".join(k[len("guard_"):] for k, v in merged.items() if v.startswith("flag"))
    return merged


# --- refusals -------------------------------------------------------------------------------------------

def check_eval_mode(model: nn.Module) -> GuardResult:
    training = [f"{name or 'model'} ({type(m).__name__})" for name, m in model.named_modules() if m.training]
    if training:
        shown = ", ".join(training[:5]) + (f" and {len(training) - 5} more" if len(training) > 5 else "")
        raise GuardFailure(
            f"The model is in train mode during evaluation ({shown}): BatchNorm would use batch statistics and "
            f"dropout would stay on, so robust accuracy would depend on the batch. Call model.eval() first.")
    return GuardResult("eval_mode", "ok")


def check_input_range(x: torch.Tensor) -> GuardResult:
    lo, hi = x.min().item(), x.max().item()
    if lo < 0.0 or hi > 1.0:
        raise GuardFailure(
            f"Inputs span [{lo:.4g}, {hi:.4g}], outside [0, 1]: normalise inside the model's first layer, "
            f"so that eps is in pixel units and attacks can clip to the valid image range.")
    return GuardResult("input_range", "ok")


def check_eps(eps: float, threat_model: str, input_dim: int | None = None) -> GuardResult:
    """Refuse budgets that cannot be in pixel units (UsageError: bad input, exit code 2; the config stage's
    check_budget, which `bench run` applies before anything is written); flag large ones."""
    check_budget(eps, threat_model, input_dim)
    if threat_model == "linf" and eps > LINF_SUSPICIOUS:
        return GuardResult("eps", "flag", f"L-inf eps {eps:.4g} > {LINF_SUSPICIOUS}: larger than any standard "
                                          "budget; is it in pixel units?")
    if threat_model == "l2" and input_dim is not None and eps > L2_SUSPICIOUS * math.sqrt(input_dim):
        return GuardResult("eps", "flag", f"L2 eps {eps:.4g} > {L2_SUSPICIOUS} sqrt(d) = "
                                          f"{L2_SUSPICIOUS * math.sqrt(input_dim):.3g}: unusually large for d = "
                                          f"{input_dim}")
    return GuardResult("eps", "ok")


def refuse_unsafe(model: nn.Module, x: torch.Tensor, eps: float, threat_model: str) -> list[GuardResult]:
    """The refusing guards only: cheap, run before every attack."""
    return [check_eval_mode(model), check_input_range(x),
            check_eps(eps, threat_model, x[0].numel() if len(x) else None)]


@torch.no_grad()
def check_outputs(model: nn.Module, x: torch.Tensor, num_classes: int | None = None) -> GuardResult:
    """Refuse logits that are not a finite (batch, num_classes) tensor: a NaN logit's argmax is an index like
    any other, and extra or missing classes make every accuracy meaningless (AutoAttack's check of the number
    of classes; here a refusal, not a flag)."""
    out = model(x)
    want = f"({len(x)}, {num_classes})" if num_classes is not None else f"({len(x)}, classes)"
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(x) or (
            num_classes is not None and out.shape[1] != num_classes):
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise GuardFailure(f"The model returns {got} for {len(x)} inputs; expected logits of shape {want}"
                           f"{' (the dataset has ' + str(num_classes) + ' classes)' if num_classes else ''}.")
    if not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).sum())
        raise GuardFailure(f"The model returns {bad} non-finite logits (NaN or infinite) on {len(x)} test inputs: "
                           f"its predictions are meaningless, so it is not evaluated.")
    return GuardResult("outputs", "ok")


# --- flags on the model ---------------------------------------------------------------------------------

@torch.no_grad()
def check_deterministic(model: nn.Module, x: torch.Tensor, rtol: float = 1e-5) -> GuardResult:
    a, b = model(x).float(), model(x).float()
    diff, scale = (a - b).abs().max().item(), 1.0 + a.abs().max().item()
    if diff > rtol * scale:
        return GuardResult("deterministic", "flag", f"two forward passes differ by {diff:.3g}: a randomised "
                                                    "model needs EOT attacks (AutoAttack version='rand')")
    return GuardResult("deterministic", "ok")


@torch.no_grad()
def check_logits(model: nn.Module, x: torch.Tensor, atol: float = 1e-4) -> GuardResult:
    out = model(x).float()
    if bool((out >= -atol).all() and (out <= 1 + atol).all() and ((out.sum(1) - 1).abs() < atol).all()):
        return GuardResult("logits", "flag", "outputs are probability rows (in [0, 1], summing to 1), not logits: "
                                             "CE-based attacks are weakened; return the logits")
    return GuardResult("logits", "ok")


def check_zero_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> GuardResult:
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = nn.functional.cross_entropy(model(x).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, [x], allow_unused=True) if loss.requires_grad else (None,)
    if grad is None:  # refused: gradient attacks would crash on it, or silently do nothing
        raise GuardFailure("The model's logits have no gradient path from its input (a constant model, or one that "
                           "detaches its input): gradient attacks cannot run on it, so it is not evaluated.")
    zero = int((grad.flatten(1).abs().sum(1) == 0).sum())
    if zero:
        return GuardResult("zero_grad", "flag", f"{zero} of {len(y)} points have an exactly zero input gradient: "
                                                "gradient masking makes gradient attacks unreliable")
    return GuardResult("zero_grad", "ok")


def check_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, threat_model: str,
                num_classes: int | None = None) -> list[GuardResult]:
    """Every model-level guard on a batch (x, y); raises GuardFailure / UsageError for the refusing ones.
    `num_classes`: the dataset's, which the logits must have (None: any number)."""
    return refuse_unsafe(model, x, eps, threat_model) + [check_outputs(model, x, num_classes)] + [
        check_deterministic(model, x), check_logits(model, x), check_zero_grad(model, x, y)]


# --- flags on the stored suite --------------------------------------------------------------------------

def check_autoattack(warnings: Sequence[str], ran_autoattack: bool) -> GuardResult:
    if not ran_autoattack:
        return GuardResult("autoattack", "skip", "no AutoAttack in this row")
    if warnings:
        return GuardResult("autoattack", "flag", " | ".join(dict.fromkeys(warnings)))
    return GuardResult("autoattack", "ok")


def monotone_tolerance(acc_a: float, acc_b: float, n: int, z: float = MONOTONE_Z) -> float:
    """z binomial standard errors at the pooled accuracy, at least one point (1/n)."""
    p = (acc_a + acc_b) / 2
    return max(z * math.sqrt(p * (1 - p) / n), 1 / n)


def check_monotone(flags: Mapping[str, Sequence[bool]], strength: Mapping[str, int],
                   z: float = MONOTONE_Z) -> GuardResult:
    """Every stronger attack must not leave more points robust than a weaker one, beyond binomial noise."""
    names = [a for a in flags if a in strength]
    if len({strength[a] for a in names}) < 2:
        return GuardResult("monotone", "skip", "fewer than two attack strengths stored")
    n = len(next(iter(flags.values())))
    acc = {a: sum(map(bool, flags[a])) / n for a in names}
    bad = []
    for weak in names:
        for strong in names:
            if strength[weak] < strength[strong]:
                tol = monotone_tolerance(acc[weak], acc[strong], n, z)
                if acc[strong] - acc[weak] > tol:
                    bad.append(f"{strong} {acc[strong]:.3f} > {weak} {acc[weak]:.3f} (tol {tol:.3f})")
    if bad:
        return GuardResult("monotone", "flag", "possible gradient masking or evaluation bug: " + "; ".join(bad))
    return GuardResult("monotone", "ok")


def check_square(flags: Mapping[str, Sequence[bool]], white_box: Sequence[str], aa_warnings: Sequence[str] = (),
                 alpha: float = SQUARE_ALPHA) -> GuardResult:
    """Square (gradient-free) breaking points that every stored white-box attack missed suggests masking."""
    notes = [w for w in aa_warnings if w.startswith("Square Attack has decreased")]
    stored = [a for a in white_box if a in flags]
    if "square" in flags and stored:
        n = len(flags["square"])
        only = sum(1 for i in range(n) if not flags["square"][i] and all(flags[a][i] for a in stored))
        if only / n > alpha:
            notes.append(f"Square alone broke {only} of {n} points that {', '.join(stored)} did not")
    elif not notes:
        return GuardResult("square", "skip", "needs a stored square row and a white-box row")
    return GuardResult("square", "flag", "; ".join(notes)) if notes else GuardResult("square", "ok")
