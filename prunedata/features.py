"""The one head finder and feature extractor: which ``nn.Linear`` is a classifier's head, and its
input features (the penultimate representation) for every sample, in one eval-mode pass."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from .errors import PruneDataError
from .progress import progress

logger = logging.getLogger(__name__)

__all__ = ["find_linear_layer", "Features", "collect_features"]


def find_linear_layer(model: nn.Module, layer: Union[None, str, nn.Module] = None) -> Tuple[str, nn.Linear]:
    """``(name, module)`` of the head to analyse.

    ``layer`` may be a module of ``model``, its dotted name (``"fc"``, ``"head.2"``), or ``None``:
    then ``model.fc`` if it is an ``nn.Linear`` (the convention of torchvision and of
    :mod:`prunedata.models`), else the last ``nn.Linear`` registered in ``model`` (for the usual
    ``features -> head`` classifiers that is the output layer; name it explicitly when it is not).
    Every method that analyses "the head" (influence, herding, GraNd, EL2N features) uses this rule.
    """
    if not isinstance(model, nn.Module):
        raise PruneDataError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if layer is None and isinstance(getattr(model, "fc", None), nn.Linear):
        name, mod = "fc", model.fc
    elif layer is None:
        found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not found:
            raise PruneDataError(f"{type(model).__name__} has no nn.Linear layer; influence pruning, herding and GraNd "
                                 "analyse the last linear layer of a classifier. Pass layer=<name> of the output layer "
                                 "if it is a custom module.")
        name, mod = found[-1]
    elif isinstance(layer, str):
        try:
            mod = model.get_submodule(layer)
        except AttributeError:
            names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            raise PruneDataError(f"{type(model).__name__} has no submodule {layer!r}; its linear layers are: "
                                 f"{names}") from None
        name = layer
    elif isinstance(layer, nn.Module):
        name = next((n for n, m in model.named_modules() if m is layer), None)
        if name is None:
            raise PruneDataError("the given layer is not a submodule of the model; pass one of model.modules()")
        mod = layer
    else:
        raise PruneDataError(f"layer must be None, a module name or an nn.Module, got {type(layer).__name__}")
    if not isinstance(mod, nn.Linear):
        raise PruneDataError(f"layer {name!r} is a {type(mod).__name__}, not nn.Linear: the closed-form influence "
                             "needs the model's last linear (logit) layer; name that one instead.")
    return name, mod


@dataclass
class Features:
    """Inputs ``h`` (n, F) of the head, labels ``y`` (n,), the dataset indices they belong to and,
    when asked for, the model's outputs ``logits`` (n, C)."""

    h: torch.Tensor
    y: torch.Tensor
    indices: np.ndarray
    logits: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.y.shape[0])


def _unpack(batch: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, dict):
        return batch["x"] if "x" in batch else batch["input"], batch["y"] if "y" in batch else batch["label"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise PruneDataError("dataset items must be (input, label) pairs (or dicts with 'x' and 'y') for influence scoring")


@torch.no_grad()
def collect_features(model: nn.Module, dataset: Any, layer: Union[None, str, nn.Module] = None, *,
                     indices: Optional[Sequence[int]] = None, batch_size: int = 512,
                     device: Union[str, torch.device, None] = None, num_workers: int = 0,
                     show_progress: bool = True, logits: bool = False, desc: str = "features") -> Features:
    """Head inputs for every sample of ``dataset`` (or the given ``indices``), in one eval-mode pass.

    A forward hook on the head (:func:`find_linear_layer`) records its input; the model is put in
    ``eval()`` mode for the pass and restored afterwards. Features stay on ``device`` (the model's
    device by default). ``logits=True`` also keeps the model's outputs.
    """
    name, head = find_linear_layer(model, layer)
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    idx = np.arange(len(dataset), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        raise PruneDataError("no samples to score: the dataset (or the index subset) is empty")
    if idx.min() < 0 or idx.max() >= len(dataset):
        raise PruneDataError(f"indices must lie in [0, {len(dataset)}); got {int(idx.min())}..{int(idx.max())}")
    ds = dataset if indices is None else Subset(dataset, idx.tolist())
    store: Dict[str, torch.Tensor] = {}

    def hook(_m, inp, _out):
        store["h"] = inp[0].detach()

    was_training = model.training
    model.eval()
    handle = head.register_forward_hook(hook)
    hs, ys, outs = [], [], []
    try:
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        for batch in progress(loader, desc=desc, disable=not show_progress):
            x, y = _unpack(batch)
            out = model(x.to(device))
            if logits:
                outs.append(out.detach())
            h = store.pop("h", None)
            if h is None:
                raise PruneDataError(f"layer {name!r} was not called in forward(); name the layer the model uses")
            hs.append(h.reshape(h.shape[0], -1))
            ys.append(torch.as_tensor(y).to(device=device, dtype=torch.long).reshape(-1))
    finally:
        handle.remove()
        model.train(was_training)
    h = torch.cat(hs)
    if h.shape[1] != head.in_features:
        raise PruneDataError(f"layer {name!r} got {h.shape[1]} input features, expected {head.in_features}")
    y = torch.cat(ys)
    if y.min() < 0 or y.max() >= head.out_features:
        raise PruneDataError(f"labels must lie in [0, {head.out_features}) (the head's outputs); got "
                             f"{int(y.min())}..{int(y.max())}")
    logger.info("collected %d x %d features of layer %s", h.shape[0], h.shape[1], name)
    return Features(h, y, idx, torch.cat(outs) if logits else None)
