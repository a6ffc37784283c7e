"""The sampler of AdaPruner joint training (a DistributedSampler that yields dataset indices)."""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Optional

import torch

from ..errors import PruneDataError
from .mask import AdaPruner


def _deprecated(name: str, then: Optional[Callable[[Any], None]] = None) -> Callable[..., Any]:
    """``AdaPrunerSampler.<name>``: the pruner's method, with a DeprecationWarning (``then(sampler)``
    runs after it)."""

    def forward(self: "AdaPrunerSampler", *args: Any, **kw: Any) -> Any:
        warnings.warn(f"AdaPrunerSampler.{name}() is deprecated and will be removed in the next release; call "
                      f"it on the pruner: sampler.pruner.{name}() (the sampler only yields indices)",
                      DeprecationWarning, stacklevel=2)
        out = getattr(self.pruner, name)(*args, **kw)
        if then is not None:
            then(self)
        return out

    forward.__name__, forward.__qualname__ = name, f"AdaPrunerSampler.{name}"
    return forward


class AdaPrunerSampler(torch.utils.data.DistributedSampler):
    """The sampler of AdaPruner joint training: every dataset index once per epoch, shuffled by
    ``seed + epoch`` (pruned samples stay in the batch and get ~zero weight from :meth:`AdaPruner.loss`).

    A :class:`torch.utils.data.DistributedSampler` over the pruner's ``N`` indices (its shuffling,
    sharding and padding; ``num_replicas``/``rank`` default to the initialised process group, else one
    replica); :meth:`set_epoch` also starts the pruner's epoch (warm-up, alpha).

    >>> pruner = AdaPruner(len(ds), keep_ratio=0.7, epochs=10)
    >>> sampler = AdaPrunerSampler(pruner, seed=0)
    >>> loader = DataLoader(IndexedDataset(ds), batch_size=256, sampler=sampler, num_workers=2)
    >>> for epoch in range(pruner.epochs):
    ...     sampler.set_epoch(epoch)
    ...     for idx, (x, y) in loader:
    ...         loss = pruner.loss(idx, F.cross_entropy(model(x), y, reduction="none"))
    ...         opt.zero_grad(); loss.backward(); opt.step(); pruner.step()
    ...     pruner.end_epoch()
    >>> pruner.selection(ds).save("selection.json")

    The mask's methods used to be reachable through the sampler (``sampler.loss``, ``step``,
    ``weights``, ``mask_loss``, ``end_epoch``, ``selection``); they still work for one release, with a
    ``DeprecationWarning``: call them on the pruner (``sampler.pruner``).
    """

    def __init__(self, pruner: AdaPruner, *, shuffle: bool = True, seed: int = 0,
                 num_replicas: Optional[int] = None, rank: Optional[int] = None, drop_last: bool = False):
        if not isinstance(pruner, AdaPruner):
            raise TypeError(f"AdaPrunerSampler needs an AdaPruner, got {type(pruner).__name__}")
        if num_replicas is None or rank is None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
                rank = dist.get_rank() if rank is None else rank
            else:
                num_replicas, rank = 1, 0
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise PruneDataError(f"rank must be in [0, num_replicas); got rank={rank}, num_replicas={num_replicas}")
        super().__init__(range(pruner.num_samples), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.pruner = pruner
        self.epoch = pruner.epoch

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch for shuffling and for the pruner's schedule (warm-up, alpha)."""
        super().set_epoch(int(epoch))
        if self.pruner.epoch != self.epoch:
            self.pruner.set_epoch(self.epoch)

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch, "seed": self.seed, "pruner": self.pruner.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.pruner.load_state_dict(state["pruner"])
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])

    weights, loss, mask_loss, step, selection = (
        _deprecated(name) for name in ("weights", "loss", "mask_loss", "step", "selection"))
    end_epoch = _deprecated("end_epoch", then=lambda self: setattr(self, "epoch", self.pruner.epoch))
