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
def one_thread():
    """Small-tensor loops stall on thread barriers when the 2 cores are shared: use one thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def linear():
    """A linear model on 4x4 inputs and 8 points labelled by it: AutoAttack's per-iteration cost is the floor."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10)).eval()
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


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
