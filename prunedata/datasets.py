"""Map-style datasets: the pruned view of a dataset, and Fashion-MNIST read from local IDX files."""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import numpy as np
import torch

from ._io import PathLike
from .errors import PruneDataError
from .labels import labels_of
from .selection import Selection

__all__ = ["PrunedDataset", "FashionMNIST", "find_fashion_mnist", "labels_of"]


class PrunedDataset(torch.utils.data.Dataset):
    """``dataset`` restricted to the kept indices of ``selection``.

    Behaves as a normal map-style dataset: ``len`` is the number of kept samples and item ``i`` is
    ``dataset[selection.kept[i]]``. ``selection`` may be a :class:`Selection` or a path to a
    selection file; it is checked against ``dataset`` (length and fingerprint) unless
    ``check=False``.
    """

    def __init__(self, dataset: Any, selection: Union[Selection, PathLike], *, check: bool = True,
                 strict: bool = True):
        if not isinstance(selection, Selection):
            selection = Selection.load(selection)
        if selection.id_kind != "index":
            raise PruneDataError("PrunedDataset needs an index selection; this one is keyed by sample key (a "
                                 "stream selection). Use prunedata.adapters.webdataset.select_keys in the webdataset "
                                 "pipeline.")
        if check:
            selection.check(dataset, strict=strict)
        elif len(dataset) != selection.dataset_size:
            selection.check(size=len(dataset))
        self.dataset = dataset
        self.selection = selection
        self.indices: List[int] = selection.kept.tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]

    def __getitems__(self, items: Sequence[int]):
        base = getattr(self.dataset, "__getitems__", None)
        idx = [self.indices[i] for i in items]
        return base(idx) if base is not None else [self.dataset[i] for i in idx]

    def original_index(self, i: int) -> int:
        """Index in the full dataset of pruned-dataset item ``i``."""
        return self.indices[i]

    @property
    def targets(self):
        labels = labels_of(self.dataset)
        if labels is None:
            raise AttributeError(f"{type(self.dataset).__name__} has no targets")
        return labels[self.selection.kept]

    def __repr__(self) -> str:
        return (f"PrunedDataset({type(self.dataset).__name__}, kept {len(self)} of "
                f"{self.selection.dataset_size}, method={self.selection.method!r})")


# --------------------------------------------------------------------------- Fashion-MNIST
_FMNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
_FMNIST_FILES = {
    True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot"]


def find_fashion_mnist(root: Optional[PathLike] = None) -> Path:
    """Folder holding the four Fashion-MNIST IDX files.

    Looks at ``root``, ``$PRUNEDATA_FASHION_MNIST``, ``/usr/share/datasets/fashion-mnist`` (Debian
    package ``dataset-fashion-mnist``) and torchvision's ``<root>/FashionMNIST/raw`` layout.
    """
    cands = []
    if root is not None:
        cands += [Path(root), Path(root) / "FashionMNIST" / "raw"]
    if os.environ.get("PRUNEDATA_FASHION_MNIST"):
        cands.append(Path(os.environ["PRUNEDATA_FASHION_MNIST"]))
    cands += [Path(p) for p in _FMNIST_DIRS]
    for c in cands:
        if all(_idx_file(c, f) is not None for f in _FMNIST_FILES[True] + _FMNIST_FILES[False]):
            return c
    raise FileNotFoundError(f"Fashion-MNIST not found (looked in {', '.join(map(str, cands))}). On Debian: `apt-get "
                            "install dataset-fashion-mnist`, or point PRUNEDATA_FASHION_MNIST at a folder with the "
                            "four *-ubyte.gz files.")


def _idx_file(folder: Path, name: str) -> Optional[Path]:
    """``folder/name`` (``.gz``) or its uncompressed twin (torchvision keeps both), if either exists."""
    for cand in (folder / name, folder / name[: -len(".gz")] if name.endswith(".gz") else folder / (name + ".gz")):
        if cand.exists():
            return cand
    return None


def read_idx(path: Path) -> np.ndarray:
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
            raw = fh.read()
    except (OSError, EOFError) as e:
        raise PruneDataError(f"{path} cannot be read ({e}); the file is corrupt or truncated, download it again") from None
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0:
        raise PruneDataError(f"{path} is not an IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)) or raw[2] != 0x08:
        raise PruneDataError(f"{path}: truncated or not uint8 IDX data")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims).copy()


class TensorSamples(torch.utils.data.Dataset):
    """Inputs held as one tensor ``_x`` with integer ``targets``; ``transform`` (optional) is applied to each
    input. Batched fetches (``__getitems__``, DataLoader's default fetcher) are one gather, not B calls."""

    def __init__(self, x: torch.Tensor, targets: torch.Tensor, transform=None):
        self._x, self.targets, self.transform = x, targets, transform

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, i: int):
        x = self._x[i]
        return (self.transform(x) if self.transform is not None else x), int(self.targets[i])

    def __getitems__(self, indices: Sequence[int]):
        idx = torch.as_tensor(indices, dtype=torch.long)
        xs, ys = self._x[idx], self.targets[idx].tolist()
        if self.transform is not None:
            return [(self.transform(x), y) for x, y in zip(xs, ys)]
        return list(zip(xs.unbind(0), ys))


class FashionMNIST(TensorSamples):
    """Fashion-MNIST from local IDX files, as float tensors ``(1, 28, 28)`` normalised, and labels.

    ``max_samples`` keeps the first ``n`` samples of a fixed class-stratified order (a smoke-test
    subset that still has every class); ``transform`` is applied to the float tensor.
    """

    classes = FMNIST_CLASSES
    mean, std = 0.2860, 0.3530

    def __init__(self, root: Optional[PathLike] = None, train: bool = True, *,
                 max_samples: Optional[int] = None, transform=None):
        folder = find_fashion_mnist(root)
        img_f, lab_f = _FMNIST_FILES[bool(train)]
        data = read_idx(_idx_file(folder, img_f))
        targets = read_idx(_idx_file(folder, lab_f)).astype(np.int64)
        if data.shape[0] != targets.shape[0]:
            raise PruneDataError(f"{folder}: {data.shape[0]} images but {targets.shape[0]} labels")
        if max_samples is not None and max_samples < len(targets):
            if max_samples <= 0:
                raise PruneDataError(f"max_samples must be positive, got {max_samples}")
            idx = stratified_prefix(targets, max_samples)
            data, targets = data[idx], targets[idx]
        self.train = bool(train)
        self.data = torch.from_numpy(np.ascontiguousarray(data))
        super().__init__((((self.data.float() / 255.0) - self.mean) / self.std).unsqueeze(1),
                         torch.from_numpy(np.ascontiguousarray(targets)), transform)

    def tensors(self):
        """All inputs and labels as two tensors (for fast full-batch feature passes)."""
        return self._x, self.targets


def stratified_prefix(targets: np.ndarray, n: int) -> np.ndarray:
    """First ``n`` indices of a deterministic round-robin-over-classes order, sorted."""
    classes = np.unique(targets)
    per = [np.flatnonzero(targets == c) for c in classes]
    order = []
    k = 0
    while len(order) < n:
        for p in per:
            if k < p.size and len(order) < n:
                order.append(p[k])
        k += 1
    return np.sort(np.array(order, dtype=np.int64))
