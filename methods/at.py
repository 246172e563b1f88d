"""`at`: standard adversarial training (Madry et al., ICLR 2018; "SAT" in the LRAT paper).
loss = (1/n) sum_i CE(f(x_adv_i), y_i), adversarial term only."""
from __future__ import annotations

from dataclasses import dataclass

from methods.base import WeightedCE


@dataclass(frozen=True)
class ATParams:
    pass


class AT(WeightedCE):
    name = "at"
    Params = ATParams
