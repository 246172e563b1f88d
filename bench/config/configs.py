"""Typed, frozen configs. The CLI and matrix files are parsed into these, and nothing downstream parses strings.

`TrainConfig` is the run identity: its canonical JSON hashes to the run id. The eval suite (`EvalConfig`) is
not part of it, so evaluating a stored run with more attacks never retrains it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from bench.config.catalog import DEFAULT_DATASET, DEFAULT_EVAL_ATTACKS, DEFAULTS
from bench.config.names import UsageError

ThreatModel = Literal["linf", "l2"]
Precision = Literal["fp32", "bf16"]
EvalPrecision = Literal["fp32", "tf32"]  # reported numbers: fp32 with TF32 off unless asked
BNMode = Literal["eval", "train"]


def parse_eps(value: str | float, threat_model: ThreatModel = "linf", what: str = "Epsilon") -> float:
    """'8/255' or '0.0314' or 0.0314 -> float in pixel units. Negative, NaN and L-inf budgets above 1 are
    refused; `what` names the value in the message (a step size is read the same way)."""
    text = str(value).strip()
    try:
        eps = float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError, OverflowError):
        raise UsageError(f"Cannot read {what.lower()} '{value}': give a number such as 8/255 or 0.0314.") from None
    if eps < 0 or eps != eps:
        raise UsageError(f"{what} must be >= 0, got {value}.")
    if threat_model == "linf" and eps > 1:
        hint = f" Did you mean {text}/255?" if eps <= 255 else ""
        raise UsageError(f"{what} {value} is larger than 1, but inputs are in [0, 1].{hint}")
    return eps


def format_eps(eps: float) -> str:
    """eps as a flag or RobustBench's files write it: "0.5" or "0.031" when a short decimal is exact, "8/255" when
    a fraction with a denominator up to 1000 is (the float of 8/255 has no short decimal), else the float's
    shortest repr; `parse_eps` reads each back as the same float."""
    short = f"{eps:.6g}"
    if float(short) == eps:
        return short
    frac = Fraction(eps).limit_denominator(1000)
    if abs(float(frac) - eps) <= 1e-12 * max(eps, 1e-12):
        return f"{frac.numerator}/{frac.denominator}"
    return repr(eps)


def check_budget(eps: float, threat_model: str, input_dim: int | None = None) -> None:
    """Refuse a budget that cannot be in pixel units: eps < 0 or NaN; L-inf eps > 1; L2 eps > sqrt(d), the
    diameter of the input cube [0, 1]^d (every input would be reachable). The eps guard of the evaluation
    (bench/evaluation/guards.py) refuses with this check; the config stage calls it before anything is written."""
    if not eps >= 0:  # also catches NaN
        raise UsageError(f"Epsilon must be >= 0, got {eps}.")
    if threat_model == "linf":
        if eps > 1:
            hint = f" Did you mean {eps:g}/255 = {eps / 255:.6g}?" if eps <= 255 else ""
            raise UsageError(f"L-inf epsilon {eps:g} is larger than 1, but inputs are in [0, 1].{hint}")
    elif threat_model == "l2":
        if input_dim is not None and eps > math.sqrt(input_dim):
            raise UsageError(f"L2 epsilon {eps:g} exceeds sqrt(d) = {math.sqrt(input_dim):.4g}, the diameter of the "
                             f"input cube [0, 1]^{input_dim}: every input would be reachable.")
    else:
        raise UsageError(f"Unknown threat model '{threat_model}' (choices: l2, linf).")


def parse_checkpoint(name: str, epochs: int | None = None) -> str:
    """'best' (highest validation PGD accuracy), 'last', or 'epochN' (the model after epoch N, kept only when
    asked for before training: the LRAT paper's Table 1 reports epoch 60 of 100). N <= epochs when given."""
    from bench.config.names import suggest

    key = name.strip().lower()
    if key in ("best", "last"):
        return key
    if key.startswith("epoch") and key[5:].isdigit() and int(key[5:]) >= 1:
        if epochs is not None and int(key[5:]) > epochs:
            raise UsageError(f"Checkpoint '{key}' is after the last epoch ({epochs}).")
        return f"epoch{int(key[5:])}"
    raise UsageError(f"Unknown checkpoint '{name}'.{suggest(key, ['best', 'last', 'epoch60'])} "
                     f"(choices: best, last, epochN such as epoch60)")


def checkpoint_epoch_number(name: str) -> int | None:
    """N of 'epochN', None for 'best' and 'last'."""
    return int(name[5:]) if name.startswith("epoch") else None


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model. Hashes to `run_id`."""

    method: str
    train_attack: str  # canonical, attacks joined by '+', e.g. "saa+cw"
    dataset: str = DEFAULT_DATASET
    model: str = "small-cnn"
    eps: float = 0.1
    method_params: dict[str, Any] = field(default_factory=dict)
    attack_steps: int = DEFAULTS.attack_steps
    attack_step_size: float = 0.025  # resolved from eps/4 by the CLI when not given
    attack_bn_mode: BNMode = "eval"
    cw_kappa: float = 50.0
    saa_targets: int = 3
    saa_steps: int = DEFAULTS.saa_steps
    saa_merge: str = "min_margin"
    train_subset: int | None = None
    val_size: int = DEFAULTS.val_size
    epochs: int = DEFAULTS.epochs
    batch_size: int = DEFAULTS.batch_size
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = DEFAULTS.weight_decay
    lr_milestones: tuple[float, ...] = (0.6, 0.9)  # fractions of the run, as the LRAT paper's 60/100, 90/100
    lr_gamma: float = 0.1
    augment: bool = False
    precision: Precision = "fp32"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    @property
    def run_id(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def attack_names(self) -> tuple[str, ...]:
        return tuple(self.train_attack.split("+"))


@dataclass(frozen=True)
class EvalConfig:
    """How a stored checkpoint is attacked. Not part of the run identity."""

    attacks: tuple[str, ...] = DEFAULT_EVAL_ATTACKS
    eps: float | None = None  # None: the training epsilon
    threat_model: ThreatModel = "linf"
    test_subset: int | None = None
    batch_size: int = DEFAULTS.eval_batch_size
    seed: int = 0
    precision: EvalPrecision = "fp32"
    checkpoints: tuple[str, ...] = DEFAULTS.checkpoints
