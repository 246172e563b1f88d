"""An example lrat-bench plugin: a method, a model, a dataset and two attacks, none of them in the package.

- `focal`: adversarial training with the focal loss (Lin et al. 2017) on the attack's output,
  w_i = (1 - p_y(x_adv_i))^gamma, normalised to mean 1 over the batch (an instance reweighting);
- `tiny-mlp`: a two-layer perceptron;
- `blobs`: ten Gaussian blobs in 1 x 8 x 8 images (no files);
- `pgd3` (training) and `pgd5` (evaluation): PGD on CE with 3 and 5 steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.attacks.pgd import PGD
from bench.attacks.training import TrainAttackInfo
from bench.config.catalog import DatasetEntry, EvalAttackEntry, TrainAttackEntry
from bench.plugins import DatasetPlugin, EvalAttackPlugin
from methods.base import WeightedCE


@dataclass(frozen=True)
class FocalParams:
    gamma: float = 2.0  # Lin et al. 2017


class FocalAT(WeightedCE):
    name = "focal"
    summary = "AT with focal weights (1 - p_y(x_adv))^gamma, mean 1 per batch (Lin et al. 2017)"
    Params = FocalParams

    def weights(self, logits_adv, y, adv, attack, ctx):
        p_y = logits_adv.softmax(1).gather(1, y[:, None]).squeeze(1)
        w = (1 - p_y).pow(self.params.gamma)
        return w / w.mean().clamp_min(1e-12)


def tiny_mlp(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 32), nn.ReLU(),
                         nn.Linear(32, num_classes))


tiny_mlp.label = "TinyMLP"
tiny_mlp.lr = 0.1


def _blobs(data_dir):
    gen = torch.Generator().manual_seed(7)
    centres = torch.rand(10, 1, 8, 8, generator=gen)

    def make(n):
        y = torch.arange(n) % 10
        x = (centres[y] + 0.15 * torch.randn(n, 1, 8, 8, generator=gen)).clamp(0, 1)
        return (x * 255).round().to(torch.uint8), y

    return make(600), make(200)


BLOBS = DatasetPlugin(DatasetEntry("Blobs", 10, 1, 8, False, "ten Gaussian blobs, 8x8", 600, 200, 0.1, 1.0), _blobs)
PGD3 = TrainAttackInfo(TrainAttackEntry("PGD-3", "PGD on CE, 3 steps of eps/4", True),
                       lambda cfg: PGD(cfg.eps, 3, cfg.eps / 4, "ce"))
PGD5 = EvalAttackPlugin(EvalAttackEntry("PGD-5", "PGD on CE, 5 steps of eps/4", 2),
                        lambda eps, threat_model: PGD(eps, 5, eps / 4, "ce", norm=threat_model), {"steps": 5})

# The same components for `bench --plugin focal_plugin` (a module that is not installed).
LRAT_BENCH = {"methods": {"focal": FocalAT}, "models": {"tiny-mlp": tiny_mlp}, "datasets": {"blobs": BLOBS},
              "train_attacks": {"pgd3": PGD3}, "eval_attacks": {"pgd5": PGD5}}
