"""Registry of selection methods, so the CLI, benchmarks and evaluation can name them.

A method is a callable ``fn(dataset, keep_ratio, *, config: MethodConfig, **options) -> Selection``.
``dataset`` is a map-style classification dataset yielding ``(x, y)``; the method trains whatever
proxy model it needs with ``config`` (architecture factory, epochs, batch size, lr, seed, device,
class balance) and returns a :class:`~prunedata.selection.Selection` whose ``method`` is its name.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..selection import Selection

from ..errors import OptionError, PruneDataError

METHODS: Dict[str, Callable[..., "Selection"]] = {}
DESCRIPTIONS: Dict[str, str] = {}

#: the built-in methods: name -> (module that registers it, description). Listed here so that
#: ``prunedata methods`` and ``--help`` name them without importing torch; the module is imported
#: when the method is first used.
BUILTIN_METHODS: Dict[str, tuple] = {
    "adapruner": ("prunedata.methods.adapruner", "AdaPruner: learnable per-sample mask trained jointly with the model"),
    "influence": ("prunedata.methods.influence_method",
                  "Influence pruning: remove the set whose summed parameter influence is smallest"),
    "random": ("prunedata.methods.baselines", "Random: a uniformly random subset (seeded)"),
    "herding": ("prunedata.methods.baselines", "Herding: greedy herding on the proxy's penultimate features (Welling 2009)"),
    "forgetting": ("prunedata.methods.baselines",
                   "Forgetting: keep the most-forgotten samples during proxy training (Toneva et al. 2019)"),
    "el2n": ("prunedata.methods.baselines",
             "EL2N: keep samples with the largest early-training error norm (Paul et al. 2021)"),
    "grand": ("prunedata.methods.baselines",
              "GraNd: keep samples with the largest per-sample gradient norm (Paul et al. 2021)"),
}


@dataclass
class MethodConfig:
    """Shared settings of every method's proxy training (plain values, scikit-learn style)."""

    model: str = "cnn"                       #: architecture name in prunedata.models.MODELS
    model_fn: Optional[Callable[[], "torch.nn.Module"]] = None  #: overrides ``model`` when given
    num_classes: int = 10
    in_channels: int = 1                     #: input image channels (3 for CIFAR)
    side: int = 28                           #: input image height = width
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.05
    seed: int = 0
    device: str = "cpu"
    class_balanced: bool = False
    num_workers: int = 0
    show_progress: bool = True
    checkpoint_dir: dataclasses.InitVar[Optional[str]] = None   #: deprecated, never used: give checkpoint=

    def __post_init__(self, checkpoint_dir: Optional[str]) -> None:
        if checkpoint_dir is not None:
            warnings.warn("MethodConfig(checkpoint_dir=...) is deprecated and was never used; pass checkpoint=PATH "
                          "to select() (the CLI's --checkpoint)", DeprecationWarning, stacklevel=3)

    def make_model(self) -> "torch.nn.Module":
        if self.model_fn is not None:
            return self.model_fn()
        import torch

        from ..models import make_model

        torch.manual_seed(self.seed)
        return make_model(self.model, num_classes=self.num_classes, in_channels=self.in_channels, side=self.side)

    def as_params(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("model_fn", "show_progress", "num_workers"):
            del d[k]
        return d


def register_method(name: str, description: str = ""):
    """Decorator: register ``fn`` as selection method ``name``, described by ``description`` (default: the
    built-in method's description in :data:`BUILTIN_METHODS`, else the first line of the docstring)."""
    def deco(fn):
        if name in METHODS and METHODS[name] is not fn:
            raise PruneDataError(f"selection method {name!r} is already registered")
        METHODS[name] = fn
        DESCRIPTIONS[name] = (description or BUILTIN_METHODS.get(name, ("", ""))[1]
                              or (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return deco


def available_methods() -> Dict[str, str]:
    """Every method's name and one-line description (built-in ones without importing them)."""
    out = {n: desc for n, (_, desc) in BUILTIN_METHODS.items()}
    out.update(DESCRIPTIONS)
    return dict(sorted(out.items()))


def select(method: str, dataset: Any, keep_ratio: float, *, config: Optional[MethodConfig] = None,
           **options) -> "Selection":
    """Run selection method ``method`` on ``dataset`` keeping ``keep_ratio`` of it."""
    from ..ratios import check_keep_ratio

    if method in BUILTIN_METHODS and method not in METHODS:     # a built-in method's module registers it
        importlib.import_module(BUILTIN_METHODS[method][0])
    if method not in METHODS:
        raise PruneDataError(f"unknown selection method {method!r}; known: {', '.join(available_methods())}")
    keep_ratio = check_keep_ratio(keep_ratio)
    config = config or MethodConfig()
    check_options(method, METHODS[method], options)
    return METHODS[method](dataset, keep_ratio, config=config, **options)


def check_options(method: str, fn: Callable[..., Any], options: Dict[str, Any],
                  extra_known: Optional[Any] = None) -> None:
    """Refuse (:class:`~prunedata.errors.OptionError`) options ``fn`` does not take, naming the ones it does.

    A method taking ``**kwargs`` is checked against ``extra_known`` (when given) or by itself."""
    params = inspect.signature(fn).parameters
    named = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
             and n not in ("dataset", "keep_ratio", "config")]
    if extra_known is None and any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    known = named + list(extra_known or [])
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise OptionError(f"method {method!r} has no option(s) {', '.join(unknown)}; its options are: "
                          f"{', '.join(sorted(known)) or '(none)'}")
