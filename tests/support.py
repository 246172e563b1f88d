"""Helpers several test files share that are not fixtures: tiny models, the small evaluation run, a step
context. Test files import them from here (never from one another); fixtures live in conftest.py."""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.attacks.training import TRAIN_ATTACKS, build_train_attacks
from bench.config import EvalConfig, TrainConfig
from bench.store import DONE, TRAINED, Store, write_json
from methods import StepContext


class TinyNet(nn.Module):
    """Conv + BatchNorm + dropout: enough to expose train/eval-mode mistakes, fast on a CPU."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8 * 7 * 7, num_classes)

    def forward(self, x):
        h = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 4)
        return self.fc(self.drop(h.flatten(1)))


class Fragile(nn.Module):
    """Scripted: correct exactly at its reference points, wrong after any perturbation of L1 size > 1e-6/20.

    The margin of the true class is 1e-6 - 20 |x - x_i|_1 + g.(x - x_i) for the nearest reference x_i, with a
    fixed |g| < 20 so that the input gradient is never zero (FGSM without a random start can move)."""

    def __init__(self, x_ref: torch.Tensor, y_ref: torch.Tensor, num_classes: int = 10):
        super().__init__()
        self.register_buffer("x_ref", x_ref.flatten(1).clone())
        self.register_buffer("y_ref", y_ref.clone())
        self.register_buffer("g", torch.linspace(-1, 1, x_ref[0].numel()))
        self.k = num_classes

    def forward(self, x):
        flat = x.flatten(1)
        i = torch.cdist(flat.detach(), self.x_ref, p=1).argmin(1)
        delta = flat - self.x_ref[i]
        margin = 1e-6 - 20 * delta.abs().sum(1) + delta @ self.g
        others = -0.01 * torch.arange(self.k, dtype=x.dtype, device=x.device).expand(len(x), self.k)
        return others.scatter(1, self.y_ref[i][:, None], margin[:, None])


def context(train_attack="pgd", epoch=0, epochs=1, steps=3, bn_mode="eval"):
    cfg = TrainConfig(method="at", train_attack=train_attack, eps=0.1, attack_steps=steps,
                      attack_step_size=0.025, saa_steps=3)
    return StepContext(attacks=build_train_attacks(cfg), attack_names=cfg.attack_names, epoch=epoch,
                       epochs=epochs, bn_mode=bn_mode, make_attack=lambda n: TRAIN_ATTACKS[n].build(cfg))


# ---- a small evaluated run (tests/test_evaluate.py, tests/test_export.py) ----

CFG = TrainConfig(method="at", train_attack="pgd", dataset="synthetic", model="small-cnn", eps=0.1, val_size=64,
                  train_subset=512, epochs=1)
N = 48


def suite(*attacks, eps=0.02, **kw) -> EvalConfig:
    return EvalConfig(attacks=attacks, eps=eps, test_subset=N, checkpoints=("best",), **kw)


def write_run(root, state, cfg: TrainConfig = CFG) -> tuple[Store, str]:
    """A finished run in a fresh store, as `bench run` leaves it (config, history, checkpoints, markers)."""
    store = Store(root)
    run_dir = store.run_dir(cfg.run_id)
    write_json(run_dir / "config.json", {"run_id": cfg.run_id, "train": cfg.to_dict(), "provenance": {}})
    write_json(run_dir / "history.json", [{"epoch": 1, "val_natural": 1.0, "val_pgd": 0.5, "best": True}])
    for ckpt in ("best", "last"):
        torch.save(state, run_dir / f"{ckpt}.pt")
    store.mark(cfg.run_id, TRAINED)
    store.mark(cfg.run_id, DONE)
    return store, cfg.run_id
