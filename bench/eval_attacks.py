"""Evaluation attacks (methods.md sec. 3), each giving per-example robust flags on a test split.

Model in eval mode, fp32, inputs in [0, 1]. The PGD family runs only on the points the model classifies
correctly (the others are not robust anyway). `aa` is AutoAttack `standard` from `pyautoattack` (the official
code); `apgd-ce`, `apgd-t`, `fab-t`, `square` are its components alone, with the standard version's settings.
Every call is seeded and isolated from the caller's RNG stream (AutoAttack reseeds the global RNG).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.attacks import PGD

AA_COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")


@dataclass(frozen=True)
class EvalAttackInfo:
    summary: str
    trained_by: tuple[str, ...]  # training attacks that simulate it: the cell counts as "seen"
    strength: int  # monotonicity guard: accuracy must not rise with strength (natural 0 < fgsm < pgd < aa)
    params: dict


PGD_NAMES = ("fgsm", "pgd20", "cw20")


def build_pgd(name: str, eps: float, threat_model: str) -> PGD:
    if name == "fgsm":
        return PGD(eps, steps=1, step_size=eps, random_start=False, norm=threat_model)
    if name == "pgd20":
        return PGD(eps, steps=20, step_size=eps / 4, loss="ce", norm=threat_model)
    if name == "cw20":
        return PGD(eps, steps=20, step_size=eps / 4, loss="cw", cw_kappa=0.0, norm=threat_model)
    raise KeyError(name)


EVAL_ATTACKS: dict[str, EvalAttackInfo] = {
    "natural": EvalAttackInfo("clean accuracy", (), 0, {}),
    "fgsm": EvalAttackInfo("FGSM, one step of eps, no random start", ("fgsm",), 1, {"steps": 1}),
    "pgd20": EvalAttackInfo("PGD-20 on CE, step eps/4, uniform random start", ("pgd",), 2,
                            {"steps": 20, "step_size": "eps/4"}),
    "cw20": EvalAttackInfo("PGD-20 on the CW margin loss, kappa_c = 0 [choice], step eps/4", ("cw",), 2,
                           {"steps": 20, "step_size": "eps/4", "cw_kappa": 0.0}),
    "aa": EvalAttackInfo("AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square), pyautoattack", ("saa",), 3,
                         {"version": "standard"}),
    "apgd-ce": EvalAttackInfo("AutoAttack's APGD-CE alone (standard settings)", ("pgd",), 2, {"version": "custom"}),
    "apgd-t": EvalAttackInfo("AutoAttack's APGD-T alone (9 targets, standard settings)", ("saa",), 2,
                             {"version": "custom"}),
    "fab-t": EvalAttackInfo("AutoAttack's FAB-T alone (standard settings)", (), 2, {"version": "custom"}),
    "square": EvalAttackInfo("AutoAttack's Square alone (5000 queries)", (), 2, {"version": "custom"}),
}


class _WarningCollector(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@dataclass
class EvalOutcome:
    flags: torch.Tensor  # bool (n,), on the CPU
    warnings: list[str]


def _batches(n: int, size: int):
    return ((i, min(i + size, n)) for i in range(0, n, size))


@torch.no_grad()
def _natural(model, x, y, batch_size) -> torch.Tensor:
    return torch.cat([model(x[a:b]).argmax(1) == y[a:b] for a, b in _batches(len(y), batch_size)])


def _run_pgd(model, x, y, attack: PGD, batch_size) -> torch.Tensor:
    flags = _natural(model, x, y, batch_size)
    idx = torch.nonzero(flags).flatten()
    for a, b in _batches(len(idx), batch_size):
        sel = idx[a:b]
        x_adv = attack(model, x[sel], y[sel]).x_adv
        with torch.no_grad():
            flags[sel] = model(x_adv).argmax(1) == y[sel]
    return flags


def _run_autoattack(model, x, y, name, eps, threat_model, seed, batch_size, state_path: Path | None):
    from pyautoattack import AutoAttack
    from pyautoattack.state import EvaluationState

    norm = {"linf": "Linf", "l2": "L2"}[threat_model]
    adversary = AutoAttack(model, eps=eps, norm=norm, seed=seed, version="standard", device=x.device)
    if name != "aa":
        adversary.attacks_to_run = [name]  # the component with the standard version's settings
    if state_path is None:
        _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
        return (y_adv == y)
    adversary.run_standard_evaluation(x, y, batch_size=batch_size, state_path=state_path)
    # The state file holds the flags across an interrupted-and-resumed run; the returned tensors do not.
    return EvaluationState.from_disk(state_path).robust_flags.to(x.device)


def run_eval_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, *, eps: float,
                    threat_model: str = "linf", seed: int = 0, batch_size: int = 256,
                    state_path: Path | None = None) -> EvalOutcome:
    """Per-example robust flags of `name` on (x, y). The caller puts the model in eval mode."""
    collector = _WarningCollector()
    aa_logger = logging.getLogger("auto-attack")
    aa_logger.setLevel(logging.WARNING)  # its INFO lines ("setting parameters ...") are noise in our progress
    aa_logger.addHandler(collector)
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            if name == "natural":
                flags = _natural(model, x, y, batch_size)
            elif name in PGD_NAMES:
                flags = _run_pgd(model, x, y, build_pgd(name, eps, threat_model), batch_size)
            else:
                flags = _run_autoattack(model, x, y, name, eps, threat_model, seed, batch_size, state_path)
    finally:
        aa_logger.removeHandler(collector)
    return EvalOutcome(flags.bool().cpu(), collector.messages)
