"""Shared fixtures: a tiny BN model and synthetic batches (units never touch real data or the network)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn


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


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)
    return x, y
