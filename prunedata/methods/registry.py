"""Registry of selection methods, so the CLI, benchmarks and evaluation can name them.

A method is a callable ``fn(dataset, keep_ratio, *, config: MethodConfig, **options) -> Selection``.
``dataset`` is a map-style classification dataset yielding ``(x, y)``; the method trains whatever
proxy model it needs with ``config`` (architecture factory, epochs, batch size, lr, seed, device,
class balance) and returns a :class:`~prunedata.selection.Selection` whose ``method`` is its name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch

from ..adapruner import check_keep_ratio
from ..errors import PruneDataError
from ..selection import Selection

METHODS: Dict[str, Callable[..., Selection]] = {}
DESCRIPTIONS: Dict[str, str] = {}


@dataclass
class MethodConfig:
    """Shared settings of every method's proxy training (plain values, scikit-learn style)."""

    model: str = "cnn"                       #: architecture name in prunedata.models.MODELS
    model_fn: Optional[Callable[[], torch.nn.Module]] = None  #: overrides ``model`` when given
    num_classes: int = 10
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.05
    seed: int = 0
    device: str = "cpu"
    class_balanced: bool = False
    num_workers: int = 0
    show_progress: bool = True
    checkpoint_dir: Optional[str] = None

    def make_model(self) -> torch.nn.Module:
        if self.model_fn is not None:
            return self.model_fn()
        from ..models import make_model

        torch.manual_seed(self.seed)
        return make_model(self.model, num_classes=self.num_classes)

    def as_params(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("model_fn")
        d.pop("show_progress")
        d.pop("checkpoint_dir")
        d.pop("num_workers")
        return d


def register_method(name: str, description: str = ""):
    """Decorator: register ``fn`` as selection method ``name``."""
    def deco(fn):
        if name in METHODS and METHODS[name] is not fn:
            raise PruneDataError(f"selection method {name!r} is already registered")
        METHODS[name] = fn
        DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().split("\n")[0]
        return fn
    return deco


def _load_builtin() -> None:
    # importing registers the built-in methods; missing optional modules are tolerated
    import importlib

    for mod in ("prunedata.methods.adapruner", "prunedata.methods.baselines", "prunedata.methods.influence_method"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def available_methods() -> Dict[str, str]:
    _load_builtin()
    return dict(sorted(DESCRIPTIONS.items()))


def select(method: str, dataset: Any, keep_ratio: float, *, config: Optional[MethodConfig] = None,
           **options) -> Selection:
    """Run selection method ``method`` on ``dataset`` keeping ``keep_ratio`` of it."""
    _load_builtin()
    if method not in METHODS:
        raise PruneDataError(f"unknown selection method {method!r}; known: {', '.join(sorted(METHODS))}")
    keep_ratio = check_keep_ratio(keep_ratio)
    config = config or MethodConfig()
    return METHODS[method](dataset, keep_ratio, config=config, **options)
