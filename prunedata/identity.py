"""Sample identity: every sample is addressed by a stable id that travels with the batch.

For map-style datasets the id is the index; :class:`IndexedDataset` returns ``(index, sample)``
so that ids come out of the DataLoader next to the data (correct under shuffling, ``num_workers>0``,
prefetching and DDP). For streams the id is the webdataset ``__key__`` (see
``prunedata.adapters.webdataset``).

:func:`dataset_fingerprint` summarises a dataset's identity so a selection file can refuse to be
applied to another dataset.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable

import numpy as np

from .errors import OptionError
from .labels import labels_of

__all__ = ["IndexedDataset", "with_indices", "dataset_fingerprint", "keys_fingerprint"]

_PROBES = 8


class DatasetWrapper:
    """Base of dataset wrappers: ``len``, the fingerprint and every attribute the wrapper lacks
    (``.targets``, ``.classes``, ...) are those of the wrapped ``self.dataset``."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        if name == "dataset" or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __prunedata_fingerprint__(self) -> str:
        return dataset_fingerprint(self.dataset)


class IndexedDataset(DatasetWrapper):
    """Map-style dataset wrapper returning ``(index, sample)``.

    >>> loader = DataLoader(IndexedDataset(ds), batch_size=256, sampler=sampler)
    >>> for idx, (x, y) in loader: ...
    """

    def __init__(self, dataset: Any):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise OptionError(f"IndexedDataset needs a map-style dataset with __getitem__ and __len__, got "
                              f"{type(dataset).__name__}. For streams use prunedata.adapters.webdataset, which keys "
                              "samples by __key__.")
        super().__init__(dataset)

    def __getitem__(self, index: int):
        return index, self.dataset[index]

    def __getitems__(self, indices):
        # DataLoader's batched fetch (torch>=2.1); keep ids attached when the base dataset has one.
        base = getattr(self.dataset, "__getitems__", None)
        items = base(indices) if base is not None else [self.dataset[i] for i in indices]
        return list(zip(indices, items))


def with_indices(dataset: Any) -> IndexedDataset:
    """Shorthand for :class:`IndexedDataset`."""
    return IndexedDataset(dataset)


# --------------------------------------------------------------------------- fingerprints
def _feed(h: "hashlib._Hash", obj: Any, depth: int = 0) -> None:
    """Hash a (nested) sample deterministically: tensors, arrays, PIL images, numbers, strings."""
    if depth > 6:
        h.update(b"<deep>")
        return
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.shape}{obj.dtype}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, (bytes, bytearray)):
        h.update(b"B" + bytes(obj))
    elif isinstance(obj, str):
        h.update(b"S" + obj.encode())
    elif isinstance(obj, (bool, int, float, np.generic)) or obj is None:
        h.update(f"N{obj!r}".encode())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(f"K{k}".encode())
            _feed(h, obj[k], depth + 1)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for x in obj:
            _feed(h, x, depth + 1)
    elif hasattr(obj, "tobytes") and hasattr(obj, "size") and hasattr(obj, "mode"):  # PIL image
        h.update(f"I{obj.size}{obj.mode}".encode())
        h.update(obj.tobytes())
    else:
        h.update(f"O{type(obj).__name__}".encode())


def dataset_fingerprint(dataset: Any, probes: int = _PROBES) -> str:
    """A short content hash identifying ``dataset``.

    Resolution order: a ``__prunedata_fingerprint__()`` method on the dataset; otherwise the
    length, the labels (``.targets``/``.labels``), file lists (``.samples`` of an ``ImageFolder``,
    relative to ``.root``), raw ``.data`` at a few evenly spaced indices, or, when none of these
    exist, ``dataset[i]`` itself at those indices. Datasets whose ``__getitem__`` is random
    (augmentation) should expose ``.data``/``.samples`` or define ``__prunedata_fingerprint__``.
    """
    custom = getattr(dataset, "__prunedata_fingerprint__", None)
    if callable(custom):
        return str(custom())
    n = len(dataset)
    h = hashlib.sha256()
    h.update(f"len={n}".encode())
    labels = labels_of(dataset, follow=False, cast=False)
    if labels is not None:
        h.update(b"labels")
        h.update(np.ascontiguousarray(labels.astype(np.int64, copy=False)).tobytes())
    idx = sorted(set(np.linspace(0, n - 1, num=min(probes, n), dtype=np.int64).tolist())) if n else []
    samples = getattr(dataset, "samples", None)
    data = getattr(dataset, "data", None)
    if isinstance(samples, (list, tuple)) and len(samples) == n:
        root = str(getattr(dataset, "root", "") or "")
        h.update(b"files")
        for item in samples:
            path = str(item[0] if isinstance(item, (tuple, list)) else item)
            if root and path.startswith(root):
                path = os.path.relpath(path, root)
            h.update(path.encode() + b"\0")
    elif data is not None and hasattr(data, "__getitem__") and _safe_len(data) == n:
        h.update(b"data")
        for i in idx:
            _feed(h, data[i])
    else:
        h.update(b"items")
        for i in idx:
            _feed(h, dataset[i])
    return "sha256:" + h.hexdigest()[:32]


def _safe_len(x: Any) -> int:
    try:
        return len(x)
    except TypeError:
        return -1


def keys_fingerprint(keys: Iterable[str]) -> str:
    """Fingerprint of a key set (order-independent), for keyed (stream) selections."""
    h = hashlib.sha256()
    ks = sorted(str(k) for k in keys)
    h.update(f"n={len(ks)}".encode())
    for k in ks:
        h.update(k.encode() + b"\0")
    return "sha256:" + h.hexdigest()[:32]
