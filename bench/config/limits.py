"""Bounds on run settings where a value outside them can only be a mistake (a typo, a slipped unit, 1e26 for
100): the config stage refuses it (exit code 2, nothing written) instead of failing, or never finishing, once
the work has started. Each upper bound is far above any recipe in use; the comments say why."""
from __future__ import annotations

# The longest adversarial-training recipes run 100-200 epochs (LRAT/GAIRAT/MAIL 100-120, TRADES 100, Rice et
# al.'s robust-overfitting study 200); 10,000 is fifty times that and could not finish on any dataset here.
MAX_EPOCHS = 10_000
# Training attacks take 1-20 steps (PGD-10, SAA's 20, CAT's 10); 10,000 steps per example per batch would make
# one CIFAR epoch take weeks.
MAX_ATTACK_STEPS = 10_000
# SGD with momentum diverges far below 10 on every model here (recipes: 0.01-0.2; --lr-scale linear from 0.1
# at batch 128 to batch 8,192 gives 6.4); an lr above 10 is a typo (1e308, or 10.1 for 0.101).
MAX_LR = 10.0
# Weight decay 1 shrinks every weight by lr x 100% per step before the gradient acts (recipes: 1e-4 to 5e-3).
MAX_WEIGHT_DECAY = 1.0
# numpy seeds lie in [0, 2^32 - 1] (bench/training/loop.py seeds numpy with seed mod 2^32, so larger seeds
# would share numpy streams) and the per-epoch shuffle seeds torch with seed x 100,003 + epoch, which must fit
# in 64 bits: 2^32 - 1 is the range every seeded library here takes.
MAX_SEED = 2**32 - 1
