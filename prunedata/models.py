"""Small reference models for image inputs (1x28x28 Fashion-MNIST by default; ``in_channels``/``side`` for
others, e.g. 3x32x32 CIFAR), used by the CLI, benchmarks and tests.

Registered by name in :data:`MODELS` (``make_model("cnn")``) so command lines and evaluation reports
can name architectures; users register their own with :func:`register_model`.
"""
from __future__ import annotations

from typing import Callable, Dict

from torch import nn

from .errors import PruneDataError

MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def deco(fn):
        if name in MODELS:
            raise PruneDataError(f"model name {name!r} is already registered")
        MODELS[name] = fn
        return fn
    return deco


def make_model(name: str, num_classes: int = 10, in_channels: int = 1, **kw) -> nn.Module:
    """A fresh model by name; ``side`` (input height = width, default 28) sizes the layers that need it."""
    if name not in MODELS:
        raise PruneDataError(f"unknown architecture {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, **kw)


class FeaturesHead(nn.Module):
    """``self.features`` then a linear head ``self.fc`` (the layer influence scoring reads and transfer
    fine-tuning replaces)."""

    def forward(self, x):
        return self.fc(self.features(x))


@register_model("cnn")
class SmallCNN(FeaturesHead):
    """Two conv blocks + a linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32, side: int = 28):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * (side // 4) ** 2, 128), nn.ReLU(),
        )
        self.fc = nn.Linear(128, num_classes)


@register_model("cnn_bn")
class BNCNN(FeaturesHead):
    """A different family from ``cnn``: batch norm, three conv blocks, global average pooling."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 24, side: int = 28):
        super().__init__()
        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())
        self.features = nn.Sequential(
            block(in_channels, width), nn.MaxPool2d(2), block(width, 2 * width), nn.MaxPool2d(2),
            block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(4 * width, num_classes)


@register_model("mlp")
class MLP(FeaturesHead):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, hidden: int = 256, side: int = 28):
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * side * side, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden // 2), nn.ReLU(),
        )
        self.fc = nn.Linear(hidden // 2, num_classes)


@register_model("linear")
class Linear(FeaturesHead):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, side: int = 28):
        super().__init__()
        self.features = nn.Flatten()
        self.fc = nn.Linear(in_channels * side * side, num_classes)
