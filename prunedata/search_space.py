"""A ConvNet architecture search space for proxy-set architecture search.

The space is the one of Yang et al. 2023 (Table 1) and of the dataset-condensation literature it
follows: ``depth`` blocks of ``conv3x3(width) -> norm -> activation -> pooling``, then a linear head
(``.fc``). The paper's space has 720 nets::

    depth       1, 2, 3, 4
    width       32, 64, 128, 256
    activation  sigmoid, relu, leakyrelu
    norm        none, batch, layer, instance, group
    pooling     none, max, avg

:data:`SEARCH_SPACES` names that one (``"paper"``), a 32-net space that trains on a CPU in minutes
(``"cpu"``) and a 4-net one for smoke tests (``"tiny"``). Every net has a name such as
``convnet-d2-w16-relu-batch-max`` which :func:`build_architecture` (and therefore ``prunedata
evaluate --architectures``) accepts next to the names of :mod:`prunedata.models`.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Sequence

from torch import nn

from .errors import PruneDataError
from .models import MODELS, FeaturesHead, make_model

__all__ = ["ConvNetSpec", "ConvNet", "conv_search_space", "search_space", "SEARCH_SPACES",
           "build_architecture", "known_architectures"]

ACTIVATIONS = ("sigmoid", "relu", "leakyrelu")
NORMS = ("none", "batch", "layer", "instance", "group")
POOLINGS = ("none", "max", "avg")

_NAME = re.compile(r"^convnet-d(\d+)-w(\d+)-([a-z]+)-([a-z]+)-([a-z]+)$")


@dataclass(frozen=True)
class ConvNetSpec:
    """One point of the search space."""

    depth: int = 3
    width: int = 32
    activation: str = "relu"
    norm: str = "instance"
    pooling: str = "avg"

    def __post_init__(self) -> None:
        for what, value in (("depth", self.depth), ("width", self.width)):
            if int(value) < 1:
                raise PruneDataError(f"ConvNet {what} must be >= 1, got {value}")
        for value, allowed, what in ((self.activation, ACTIVATIONS, "activation"), (self.norm, NORMS, "norm"),
                                     (self.pooling, POOLINGS, "pooling")):
            if value not in allowed:
                raise PruneDataError(f"unknown ConvNet {what} {value!r}; choose one of {', '.join(allowed)}")

    @property
    def name(self) -> str:
        return f"convnet-d{self.depth}-w{self.width}-{self.activation}-{self.norm}-{self.pooling}"

    @classmethod
    def from_name(cls, name: str) -> "ConvNetSpec":
        m = _NAME.match(name)
        if not m:
            raise PruneDataError(f"{name!r} is not a ConvNet name; the pattern is convnet-d<depth>-w<width>-"
                                 "<activation>-<norm>-<pooling>, e.g. convnet-d2-w16-relu-batch-max")
        return cls(int(m.group(1)), int(m.group(2)), m.group(3), m.group(4), m.group(5))

    def build(self, num_classes: int = 10, in_channels: int = 1, side: int = 28) -> "ConvNet":
        return ConvNet(self, num_classes=num_classes, in_channels=in_channels, side=side)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # normalises over (C, H, W) like LayerNorm, any input size
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    return nn.GroupNorm(min(4, channels) if channels % min(4, channels) == 0 else 1, channels)


def _act(kind: str) -> nn.Module:
    return {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.01)}[kind]()


class ConvNet(FeaturesHead):
    """``depth`` x (conv3x3 -> norm -> activation -> pool 2x2) and a linear head ``.fc``."""

    def __init__(self, spec: ConvNetSpec, num_classes: int = 10, in_channels: int = 1, side: int = 28):
        super().__init__()
        self.spec = spec
        layers: List[nn.Module] = []
        c, s = in_channels, side
        for _ in range(spec.depth):
            layers += [nn.Conv2d(c, spec.width, 3, padding=1, bias=spec.norm == "none"),
                       _norm(spec.norm, spec.width), _act(spec.activation)]
            c = spec.width
            if spec.pooling != "none" and s >= 2:
                layers.append(nn.MaxPool2d(2) if spec.pooling == "max" else nn.AvgPool2d(2))
                s //= 2
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c * s * s, num_classes)


def conv_search_space(depths: Sequence[int] = (1, 2, 3, 4), widths: Sequence[int] = (32, 64, 128, 256),
                      activations: Sequence[str] = ACTIVATIONS, norms: Sequence[str] = NORMS,
                      poolings: Sequence[str] = POOLINGS) -> List[ConvNetSpec]:
    """Every combination of the given choices (the defaults give the paper's 720 nets)."""
    specs = [ConvNetSpec(*choice) for choice in itertools.product(depths, widths, activations, norms, poolings)]
    if not specs:
        raise PruneDataError("the search space is empty: give at least one value for every choice")
    return specs


SEARCH_SPACES: Dict[str, Dict[str, tuple]] = {
    "paper": dict(depths=(1, 2, 3, 4), widths=(32, 64, 128, 256), activations=ACTIVATIONS, norms=NORMS,
                  poolings=POOLINGS),
    "cpu": dict(depths=(1, 3), widths=(8, 16), activations=("relu", "sigmoid"), norms=("none", "batch"),
                poolings=("max", "avg")),
    "tiny": dict(depths=(1, 2), widths=(4,), activations=("relu", "sigmoid"), norms=("batch",), poolings=("max",)),
}


def search_space(name_or_specs) -> List[ConvNetSpec]:
    """A named space (``"paper"``: 720, ``"cpu"``: 32, ``"tiny"``: 4 nets) or a list of specs/names."""
    if isinstance(name_or_specs, str):
        if name_or_specs not in SEARCH_SPACES:
            raise PruneDataError(f"unknown search space {name_or_specs!r}; known: {', '.join(SEARCH_SPACES)}")
        return conv_search_space(**SEARCH_SPACES[name_or_specs])
    out = [s if isinstance(s, ConvNetSpec) else ConvNetSpec.from_name(str(s)) for s in name_or_specs]
    if len(out) < 2:
        raise PruneDataError("an architecture search needs at least two architectures to rank")
    return out


def known_architectures() -> List[str]:
    return sorted(MODELS) + ["convnet-d<depth>-w<width>-<activation>-<norm>-<pooling>"]


def check_architectures(names: Iterable[str]) -> List[str]:
    """Validate architecture names before any training starts (clear error for unknown ones)."""
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise PruneDataError("no architecture given; name at least one, e.g. cnn,cnn_bn,mlp")
    for n in names:
        if n in MODELS:
            continue
        if not n.startswith("convnet-"):
            raise PruneDataError(f"unknown architecture {n!r}; known: {', '.join(known_architectures())}")
        ConvNetSpec.from_name(n)
    return names


def build_architecture(name: str, num_classes: int = 10, in_channels: int = 1, side: int = 28) -> nn.Module:
    """A fresh model by name: a :mod:`prunedata.models` name or a ConvNet name of this module."""
    check_architectures([name])
    if name in MODELS:
        return make_model(name, num_classes=num_classes, in_channels=in_channels, side=side)
    return ConvNetSpec.from_name(name).build(num_classes=num_classes, in_channels=in_channels, side=side)
