"""The training-attack registry: names -> factories taking the run's TrainConfig (docs/methods.md sec. 1)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.attacks.kl import KLPGD
from bench.attacks.pgd import PGD, FGSMRandomStart
from bench.config import TrainConfig
from bench.config.catalog import TRAIN_ATTACKS as CATALOG, TrainAttackEntry
from bench.config.method_params import attack_steps_per_example as steps_per_example
from bench.attacks.saa import SAA
from bench.plugins import attach


@dataclass(frozen=True)
class TrainAttackInfo:
    entry: TrainAttackEntry  # label, summary, has_kappa: bench/config/catalog.py
    build: Callable[[TrainConfig], object]

    @property
    def summary(self) -> str:
        return self.entry.summary

    @property
    def has_kappa(self) -> bool:
        return self.entry.has_kappa


TRAIN_ATTACKS = {
    "pgd": TrainAttackInfo(CATALOG["pgd"], lambda c: PGD(c.eps, c.attack_steps, c.attack_step_size, "ce")),
    "cw": TrainAttackInfo(CATALOG["cw"],
                          lambda c: PGD(c.eps, c.attack_steps, c.attack_step_size, "cw", cw_kappa=c.cw_kappa)),
    "saa": TrainAttackInfo(CATALOG["saa"], lambda c: SAA(c.eps, c.saa_targets, c.saa_steps, c.saa_merge)),
    "fgsm": TrainAttackInfo(CATALOG["fgsm"], lambda c: FGSMRandomStart(c.eps)),
    "kl": TrainAttackInfo(CATALOG["kl"], lambda c: KLPGD(c.eps, c.attack_steps, c.attack_step_size)),
}


attach("train_attacks", TRAIN_ATTACKS.__setitem__)  # plugin training attacks (bench/plugins.py)


def build_train_attacks(cfg: TrainConfig) -> tuple:
    return tuple(TRAIN_ATTACKS[name].build(cfg) for name in cfg.attack_names)


def attack_steps_per_example(cfg: TrainConfig) -> int:
    """Gradient steps one training example costs in its attacks (bench/config/method_params.py)."""
    return steps_per_example(cfg.train_attack, cfg.attack_steps, cfg.saa_targets, cfg.saa_steps)
