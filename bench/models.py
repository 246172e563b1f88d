"""Models: one factory, `build_model(name, num_classes, in_channels)`. Inputs in [0, 1]; a model that wants
mean/std normalisation must do it in its own first layer (none here does, as in the LRAT/GAIRAT code)."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.config.names import UsageError, lookup
from bench.plugins import attach, source


class SmallCNN(nn.Module):
    """The TRADES/GAIRAT "SmallCNN" for 28x28 inputs (4 conv, 3 fc, dropout 0.5)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, drop: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, 32, 3)), ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(32, 32, 3)), ("relu2", nn.ReLU()), ("pool1", nn.MaxPool2d(2, 2)),
            ("conv3", nn.Conv2d(32, 64, 3)), ("relu3", nn.ReLU()),
            ("conv4", nn.Conv2d(64, 64, 3)), ("relu4", nn.ReLU()), ("pool2", nn.MaxPool2d(2, 2)),
        ]))
        side = ((image_size - 4) // 2 - 4) // 2
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(64 * side * side, 200)), ("relu1", nn.ReLU()), ("drop", nn.Dropout(drop)),
            ("fc2", nn.Linear(200, 200)), ("relu2", nn.ReLU()), ("fc3", nn.Linear(200, num_classes)),
        ]))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)  # TRADES init (fan_in)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.classifier.fc3.weight)  # as in the TRADES code
        nn.init.zeros_(self.classifier.fc3.bias)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class CNNBN(nn.Module):
    """A BatchNorm CNN for 28x28 inputs that pools early: conv 3x3 `width` + BN + ReLU + max-pool 2, conv 3x3
    2*`width` + BN + ReLU + max-pool 2, fc 2*width*7*7 -> 128 -> classes. `cnn-bn` (width 16, ~0.21M parameters)
    is the harness's default for (Fashion-)MNIST, `cnn-bn-wide` (width 32, ~0.42M) the form measured in issue 23:
    SmallCNN (no BatchNorm, zero-initialised last layer) stays near chance for its first epochs of adversarial
    training at a CPU budget, and its seeds then part ways (docs/methods.md sec. 8)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, width: int = 16):
        super().__init__()
        w1, w2 = width, 2 * width
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, w1, 3, padding=1, bias=False)), ("bn1", nn.BatchNorm2d(w1)),
            ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2, 2)),
            ("conv2", nn.Conv2d(w1, w2, 3, padding=1, bias=False)), ("bn2", nn.BatchNorm2d(w2)),
            ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2, 2)),
        ]))
        side = image_size // 4
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(w2 * side * side, 128)), ("relu1", nn.ReLU()), ("fc2", nn.Linear(128, num_classes)),
        ]))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class PreActBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        return self.conv2(F.relu(self.bn2(out))) + shortcut


class ResNet(nn.Module):
    """CIFAR-form ResNet-18 (3x3 stem, no max-pool); `preact=True` gives PreAct ResNet-18."""

    def __init__(self, num_classes=10, in_channels=3, preact=False):
        super().__init__()
        block = PreActBlock if preact else BasicBlock
        self.preact = preact
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers = []
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            for s in (stride, 1):
                layers.append(block(self.in_planes, planes, s))
                self.in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.conv1(x)
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layers(out)
        if self.preact:
            out = F.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class WideBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None if in_planes == planes and stride == 1 else nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        return self.conv2(F.relu(self.bn2(self.conv1(out)))) + shortcut


class WideResNet(nn.Module):
    """WRN-depth-widen (Zagoruyko & Komodakis), the form used by TRADES, GAIRAT and MAIL."""

    def __init__(self, depth=34, widen=10, num_classes=10, in_channels=3):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, in_planes = [], widths[0]
        for width, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                blocks.append(WideBlock(in_planes, width, stride if i == 0 else 1))
                in_planes = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


MODELS = {
    "cnn-bn": lambda k, c, s: CNNBN(k, c, s, width=16),
    "cnn-bn-wide": lambda k, c, s: CNNBN(k, c, s, width=32),
    "small-cnn": lambda k, c, s: SmallCNN(k, c, s),
    "resnet18": lambda k, c, s: ResNet(k, c, preact=False),
    "preact-resnet18": lambda k, c, s: ResNet(k, c, preact=True),
    "wrn-34-10": lambda k, c, s: WideResNet(34, 10, k, c),
}


attach("models", MODELS.__setitem__)  # plugin models (bench/plugins.py)


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    model = lookup("model", name, MODELS)(num_classes, in_channels, image_size)
    if not isinstance(model, nn.Module):  # a plugin factory's mistake, said in a sentence (not an AttributeError)
        raise UsageError(f"Model '{name}' ({source('models', name)}): its factory returned a "
                         f"{type(model).__name__}, not a torch.nn.Module (it is called as factory(num_classes, "
                         f"in_channels, image_size) and must return the model).")
    return model
