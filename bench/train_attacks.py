"""The training-attack registry: names -> factories taking the run's TrainConfig (methods.md sec. 1)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.attacks import PGD, FGSMRandomStart
from bench.config import TrainConfig
from bench.config.names import UsageError, lookup
from bench.saa import SAA


@dataclass(frozen=True)
class TrainAttackInfo:
    summary: str
    has_kappa: bool
    build: Callable[[TrainConfig], object]
    steps: Callable[[TrainConfig], int]  # gradient steps per example, for cost estimates


TRAIN_ATTACKS = {
    "pgd": TrainAttackInfo(
        "PGD on CE, K steps (default 10 of eps/4), uniform random start (Madry et al. 2018)", True,
        lambda c: PGD(c.eps, c.attack_steps, c.attack_step_size, "ce"), lambda c: c.attack_steps),
    "cw": TrainAttackInfo(
        "PGD on the CW margin loss, kappa_c = 50 as in the CAT/GAIRAT code", True,
        lambda c: PGD(c.eps, c.attack_steps, c.attack_step_size, "cw", cw_kappa=c.cw_kappa),
        lambda c: c.attack_steps),
    "saa": TrainAttackInfo(
        "LRAT's simplified AutoAttack: APGD targeted DLR, 3 targets x 20 steps, lowest-margin merge", False,
        lambda c: SAA(c.eps, c.saa_targets, c.saa_steps, c.saa_merge), lambda c: c.saa_targets * c.saa_steps),
    "fgsm": TrainAttackInfo(
        "FGSM with random start, one step of 1.25 eps (Wong et al. 2020); cheap runs and tests", False,
        lambda c: FGSMRandomStart(c.eps), lambda c: 1),
}
HAS_KAPPA = {name: info.has_kappa for name, info in TRAIN_ATTACKS.items()}  # for Method.check_attacks


def parse_train_attack(value: str) -> str:
    """'saa + CW' -> 'saa+cw', each part checked against the registry (a '+' combines attacks in one run)."""
    parts = [p.strip().lower() for p in value.split("+")]
    if not all(parts):
        raise UsageError(f"Malformed training attack '{value}': use names joined by '+', e.g. saa+cw.")
    for p in parts:
        lookup("training attack", p, TRAIN_ATTACKS)
    if len(set(parts)) != len(parts):
        raise UsageError(f"Training attack '{value}' names the same attack twice.")
    return "+".join(parts)


def build_train_attacks(cfg: TrainConfig) -> tuple:
    return tuple(TRAIN_ATTACKS[name].build(cfg) for name in cfg.attack_names)


def attack_steps_per_example(cfg: TrainConfig) -> int:
    return sum(TRAIN_ATTACKS[name].steps(cfg) for name in cfg.attack_names)
