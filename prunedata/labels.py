"""The one label reader: every sample's class label, from the dataset's attributes or by reading it."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .errors import PruneDataError

__all__ = ["labels_of", "read_labels"]


def _own_labels(dataset: Any, cast: bool) -> Optional[np.ndarray]:
    for attr in ("targets", "labels"):
        lab = getattr(dataset, attr, None)
        try:
            if lab is None or callable(lab) or len(lab) != len(dataset):
                continue
        except TypeError:  # no len(): not a label array (or an iterable dataset)
            continue
        arr = np.asarray(lab.cpu() if hasattr(lab, "cpu") else lab)
        if not cast:
            return arr
        if arr.ndim == 1:
            return arr.astype(np.int64)
    return None


def labels_of(dataset: Any, *, required: bool = False, what: str = "dataset", follow: bool = True,
              cast: bool = True) -> Optional[np.ndarray]:
    """Labels of every sample as an int64 array, if the dataset exposes them cheaply (``.targets`` or
    ``.labels``; through ``Subset`` and wrappers with a ``.dataset`` of the same length when
    ``follow``), else ``None`` -- or, with ``required=True``, a :class:`PruneDataError` naming ``what``.

    ``cast=False, follow=False`` gives the dataset's own attribute as stored (the form the dataset
    fingerprint hashes; changing it would orphan every saved selection file).
    """
    import torch

    d = dataset
    while True:
        lab = _own_labels(d, cast)
        if lab is not None or not follow:
            break
        if isinstance(d, torch.utils.data.Subset):
            inner = labels_of(d.dataset, cast=cast)
            lab = None if inner is None else inner[np.asarray(d.indices)]
            break
        inner = getattr(d, "dataset", None)
        if inner is None or inner is d or len(inner) != len(d):
            break
        d = inner
    if lab is None and required:
        raise PruneDataError(f"the {what} does not expose its labels (.targets or .labels); give the dataset a "
                             "`targets` attribute (one int per sample)")
    return lab


def read_labels(dataset: Any, batch_size: int = 1024) -> np.ndarray:
    """Labels of every sample: :func:`labels_of` when the dataset exposes them, else read through a
    DataLoader (one pass over the data)."""
    import torch
    from torch.utils.data import DataLoader

    lab = labels_of(dataset)
    if lab is not None:
        return lab
    ys = [torch.as_tensor(y).reshape(-1) for _, y in DataLoader(dataset, batch_size=batch_size)]
    return torch.cat(ys).long().numpy() if ys else np.zeros(0, dtype=np.int64)
