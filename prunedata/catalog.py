"""Datasets by name, for the command line and for any code that names a dataset in a string.

A *dataset spec* is one of

* ``fashion-mnist`` -- the Debian package ``dataset-fashion-mnist`` (or ``--root`` holding the IDX files);
* a torchvision dataset by name, read from its on-disk layout under ``--root``: ``mnist``,
  ``fashionmnist``, ``kmnist``, ``cifar10``, ``cifar100``, ``svhn``. Nothing is downloaded unless
  ``download=True`` (``--download``), which fetches the files with torchvision first;
* the path of an ImageFolder directory (one sub-folder of images per class, optionally under
  ``train/`` and ``test/``; the test split's classes are matched to the training split's by name);
* ``module:callable`` or ``path/to/file.py:callable`` -- your own map-style dataset. The callable is
  called as ``fn(train=True)`` for the training split and ``fn(train=False)`` for the test split (it
  may also take ``root`` and ``download``, passed on when given), so it chooses its own train and test
  transforms. Items must be ``(input_tensor, int_label)``; labels are read from a ``.targets`` (or
  ``.labels``) attribute when the dataset has one, else once from the items;
* a name registered in Python with :func:`register_dataset` (Detectron2's ``DatasetCatalog`` style).

Every loader returns a map-style dataset with ``.targets`` (and ``.classes`` when known), restricted to
a class-stratified subset with ``max_samples``.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import pickle
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ._optional import require
from .errors import PruneDataError
from .identity import DatasetWrapper
from .labels import labels_of

logger = logging.getLogger(__name__)

__all__ = ["load_dataset", "register_dataset", "registered_datasets", "accepted_forms", "TensorImageDataset",
           "input_shape", "num_classes", "stratified_subset", "TORCHVISION_NAMES"]

_REGISTRY: Dict[str, Callable[..., Any]] = {}


def register_dataset(name: str, fn: Callable[..., Any]) -> None:
    """Make ``name`` a dataset spec: ``fn(train=bool)`` returns the split (a map-style dataset)."""
    key = _norm(name)
    if key in _REGISTRY and _REGISTRY[key] is not fn:
        raise PruneDataError(f"dataset name {name!r} is already registered")
    _REGISTRY[key] = fn


def registered_datasets() -> List[str]:
    return sorted(_REGISTRY)


def _norm(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


# --------------------------------------------------------------------------- in-memory image tensors
class TensorImageDataset:
    """Images held as one ``uint8`` tensor ``(N, C, H, W)`` with integer labels; items are
    ``(normalised float tensor, label)``. Batched fetches (``__getitems__``) are one gather."""

    def __init__(self, data, targets, *, classes: Optional[Sequence[str]] = None, mean: Sequence[float] = (0.5,),
                 std: Sequence[float] = (0.5,), transform: Optional[Callable] = None, name: str = ""):
        import torch

        self.data = data
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        if self.data.dim() != 4 or self.data.shape[0] != self.targets.shape[0]:
            raise PruneDataError(f"{name or 'image tensor'}: expected (N, C, H, W) images and N labels, got "
                                 f"{tuple(self.data.shape)} and {tuple(self.targets.shape)}")
        self.classes = list(classes) if classes is not None else [str(c) for c in range(int(self.targets.max()) + 1)]
        c = self.data.shape[1]
        self._mean = torch.tensor(list(mean) * (c if len(mean) == 1 else 1), dtype=torch.float32).view(1, c, 1, 1)
        self._std = torch.tensor(list(std) * (c if len(std) == 1 else 1), dtype=torch.float32).view(1, c, 1, 1)
        self.transform = transform
        self.name = name

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def _x(self, idx):
        return (self.data[idx].float().div_(255.0) - self._mean) / self._std

    def __getitem__(self, i: int):
        x = self._x([int(i)])[0]
        return (self.transform(x) if self.transform else x), int(self.targets[i])

    def __getitems__(self, indices: Sequence[int]):
        import torch

        idx = torch.as_tensor(indices, dtype=torch.long)
        xs, ys = self._x(idx), self.targets[idx].tolist()
        if self.transform is not None:
            return [(self.transform(x), y) for x, y in zip(xs, ys)]
        return list(zip(xs.unbind(0), ys))

    def __repr__(self) -> str:
        return f"TensorImageDataset({self.name!r}, {len(self)} images {tuple(self.data.shape[1:])})"


# --------------------------------------------------------------------------- torchvision layouts
#: name -> (torchvision class, folder under root, mean, std)
TORCHVISION_NAMES = {
    "mnist": ("MNIST", "MNIST", (0.1307,), (0.3081,)),
    "fashionmnist": ("FashionMNIST", "FashionMNIST", (0.2860,), (0.3530,)),
    "kmnist": ("KMNIST", "KMNIST", (0.1918,), (0.3483,)),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", "cifar-100-python", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ("SVHN", "", (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}
_MNIST_CLASSES = {
    "mnist": [str(i) for i in range(10)],
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
}


def _download(key: str, root: Path, train: bool) -> None:
    name = TORCHVISION_NAMES[key][0]
    cls = getattr(require("torchvision.datasets", extra="vision", purpose="--download"), name)
    logger.info("downloading %s into %s (torchvision)", name, root)
    split = {"split": "train" if train else "test"} if key == "svhn" else {"train": train}
    try:
        cls(str(root), download=True, **split)
    except Exception as e:  # network errors, checksum failures: say what failed, not where in torchvision
        raise PruneDataError(f"could not download {name} into {root}: {e}") from None


def _open_idx(folder: Path, stem: str) -> Tuple[Any, Path]:
    from .datasets import read_idx

    for name in (stem, stem + ".gz"):
        if (folder / name).exists():
            return read_idx(folder / name), folder / name
    raise FileNotFoundError(str(folder / stem))


def _load_idx(key: str, root: Path, train: bool, name: str):
    folder = root / TORCHVISION_NAMES[key][1] / "raw"
    prefix = "train" if train else "t10k"
    try:
        images, path = _open_idx(folder, f"{prefix}-images-idx3-ubyte")
        labels, _ = _open_idx(folder, f"{prefix}-labels-idx1-ubyte")
    except FileNotFoundError as e:
        raise _not_found(key, root, f"the IDX file {e}") from None
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise PruneDataError(f"{path}: {images.shape[0]} images of shape {images.shape[1:]} but {labels.shape[0]} "
                             "labels; the IDX files are corrupt or from different splits")
    return images[:, None], labels.astype("int64"), _MNIST_CLASSES[key]


def _unpickle(path: Path) -> Dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="latin1")
    except FileNotFoundError:
        raise
    except Exception as e:
        raise PruneDataError(f"{path} is not a readable CIFAR batch file ({e}); download it again") from None


def _load_cifar(key: str, root: Path, train: bool, name: str):
    folder = root / TORCHVISION_NAMES[key][1]
    if key == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        meta_file, label_key, names_key = "batches.meta", "labels", "label_names"
    else:
        files = ["train"] if train else ["test"]
        meta_file, label_key, names_key = "meta", "fine_labels", "fine_label_names"
    xs, ys = [], []
    try:
        for f in files:
            d = _unpickle(folder / f)
            if "data" not in d or label_key not in d:
                raise PruneDataError(f"{folder / f} has no 'data'/'{label_key}' entries: not a {name} batch file")
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        meta = _unpickle(folder / meta_file) if (folder / meta_file).exists() else {}
    except FileNotFoundError as e:
        raise _not_found(key, root, f"the batch file {e.filename}") from None
    return np.concatenate(xs), np.concatenate(ys), meta.get(names_key)


def _load_svhn(key: str, root: Path, train: bool, name: str):
    path = root / f"{'train' if train else 'test'}_32x32.mat"
    if not path.exists():
        raise _not_found(key, root, f"the file {path}")
    loadmat = require("scipy.io", extra="vision", purpose="reading SVHN's .mat files").loadmat
    try:
        d = loadmat(str(path))
        x = np.transpose(d["X"], (3, 2, 0, 1))  # (32, 32, 3, N) -> (N, 3, 32, 32)
        y = d["y"].astype(np.int64).reshape(-1)
    except Exception as e:
        raise PruneDataError(f"{path} is not a readable SVHN .mat file ({e}); download it again") from None
    y[y == 10] = 0  # SVHN labels the digit 0 as 10 (torchvision does the same mapping)
    return x, y, [str(i) for i in range(10)]


def _not_found(key: str, root: Path, what: str) -> PruneDataError:
    tv, folder = TORCHVISION_NAMES[key][:2]
    where = root / folder if folder else root
    return PruneDataError(f"{tv} not found under --root {root}: {what} is missing (expected torchvision's layout "
                          f"in {where}); point --root at the folder you gave torchvision, or add --download")


def _load_torchvision(key: str, *, train: bool, root: Optional[str], download: bool):
    import torch

    if root is None:
        raise PruneDataError(f"{TORCHVISION_NAMES[key][0]} is read from torchvision's folder layout: give --root "
                             "DIR (the root you gave torchvision), and --download to fetch it there first")
    r = Path(root).expanduser()
    if download:
        _download(key, r, train)
    # (fashion-mnist never comes here: load_dataset reads it with datasets.FashionMNIST)
    reader = _load_idx if key in _MNIST_CLASSES else _load_svhn if key == "svhn" else _load_cifar
    name, _, mean, std = TORCHVISION_NAMES[key]
    data, labels, classes = reader(key, r, train, name)  # (N, C, H, W) uint8 images, int labels, class names
    return TensorImageDataset(torch.from_numpy(np.ascontiguousarray(data)), labels, classes=classes, mean=mean, std=std,
                              name=f"{name} {'train' if train else 'test'}")


# --------------------------------------------------------------------------- ImageFolder
def _load_image_folder(path: Path, *, train: bool):
    from prunedata.adapters.classification import image_folder

    split = path / ("train" if train else "test")
    if train:
        return image_folder(str(split if split.is_dir() else path))
    if not split.is_dir():
        raise PruneDataError(f"{path} has no test/ folder to test on: lay it out as {path}/train/<class>/... and "
                             f"{path}/test/<class>/... (class folders of the same names)")
    train_dir = path / "train"  # the test split's classes are numbered as the training split's
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir()) if train_dir.is_dir() else None
    return image_folder(str(split), classes=classes)


# --------------------------------------------------------------------------- module:callable
def _import_callable(spec: str) -> Callable[..., Any]:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise PruneDataError(f"{spec!r}: a dataset callable is given as module:callable or path/to/file.py:callable")
    try:
        if target.endswith(".py") or "/" in target:
            path = Path(target).expanduser()
            if not path.is_file():
                raise PruneDataError(f"{spec!r}: no Python file {path}")
            name = f"prunedata_user_{abs(hash(str(path.resolve())))}"
            mod_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[name] = module
            mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(target)
    except ModuleNotFoundError as e:
        raise PruneDataError(f"{spec!r}: cannot import module {target!r} ({e}); make it importable (install it, or "
                             "run from its folder / set PYTHONPATH), or give the file path instead") from None
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise PruneDataError(f"{spec!r}: {target} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise PruneDataError(f"{spec!r}: {attr} is not callable; give a function or class returning a dataset")
    return fn


def _call_dataset_fn(fn: Callable[..., Any], spec: str, *, train: bool, root: Optional[str], download: bool):
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    kwargs: Dict[str, Any] = {}
    if "train" in params or var_kw:
        kwargs["train"] = train
    elif not train:
        raise PruneDataError(f"{spec}: the callable takes no `train` argument, so there is no test split; give it a "
                             "parameter `train` and return the test split (with its test transform) for train=False")
    for k, v in (("root", root), ("download", download)):
        if v and (k in params or var_kw):
            kwargs[k] = v
        elif v and k == "root":
            raise PruneDataError(f"{spec}: --root was given but the callable takes no `root` argument")
    ds = fn(**kwargs)
    if not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
        raise PruneDataError(f"{spec} returned {type(ds).__name__}, not a map-style dataset (with __getitem__ and "
                             "__len__); for streams use prunedata.adapters.webdataset")
    if len(ds) == 0:
        raise PruneDataError(f"{spec} returned an empty dataset ({'train' if train else 'test'} split)")
    return _with_labels(ds, spec)


class _Labelled(DatasetWrapper):
    """A dataset with labels read once from its items (for datasets without ``.targets``)."""

    def __init__(self, dataset: Any, targets):
        super().__init__(dataset)
        self.targets = targets

    def __getitem__(self, i: int):
        return self.dataset[i]


def _with_labels(ds: Any, spec: str):
    if labels_of(ds) is not None:
        return ds
    logger.info("%s has no .targets: reading the labels from its %d items once", spec, len(ds))
    labels = []
    for i in range(len(ds)):
        item = ds[i]
        y = item[1] if isinstance(item, (tuple, list)) and len(item) >= 2 else None
        try:
            labels.append(int(y))
        except (TypeError, ValueError):
            raise PruneDataError(f"{spec}: item {i} is not (input, int label) (got {type(item).__name__}); return "
                                 "(tensor, label) pairs or give the dataset a .targets attribute") from None
    return _Labelled(ds, np.asarray(labels, dtype=np.int64))


# --------------------------------------------------------------------------- entry point
def accepted_forms() -> str:
    names = ", ".join(["fashion-mnist"] + sorted(TORCHVISION_NAMES) + registered_datasets())
    return (f"a dataset name ({names}; torchvision names read --root), the path of an ImageFolder directory, or "
            "module:callable / file.py:callable returning a map-style dataset")


def load_dataset(spec: str, *, train: bool = True, root: Optional[str] = None, download: bool = False,
                 max_samples: Optional[int] = None):
    """The ``train`` (or test) split of the dataset named by ``spec`` (see the module docstring)."""
    if max_samples is not None and int(max_samples) <= 0:
        raise PruneDataError(f"--max-samples must be a positive number of samples, got {max_samples}")
    spec = str(spec)
    key = _norm(spec)
    path = Path(spec).expanduser()
    if key in _REGISTRY:
        ds = _call_dataset_fn(_REGISTRY[key], spec, train=train, root=root, download=download)
    elif key == "fashionmnist":  # one reader (one fingerprint) for the Debian files and torchvision's layout
        from .datasets import FashionMNIST

        if download:
            if root is None:
                raise PruneDataError("--download needs --root DIR to download into")
            _download(key, Path(root).expanduser(), train)
        return FashionMNIST(root=root, train=train, max_samples=max_samples)
    elif key in TORCHVISION_NAMES:
        ds = _load_torchvision(key, train=train, root=root, download=download)
    elif path.is_dir():
        ds = _load_image_folder(path, train=train)
    elif ":" in spec and not path.exists():
        ds = _call_dataset_fn(_import_callable(spec), spec, train=train, root=root, download=download)
    else:
        what = "no such directory" if ("/" in spec or spec.startswith(".")) else "unknown dataset"
        raise PruneDataError(f"{what} {spec!r}: use {accepted_forms()}")
    if max_samples is not None and int(max_samples) < len(ds):
        ds = stratified_subset(ds, int(max_samples))
    return ds


def stratified_subset(ds: Any, n: int):
    """The first ``n`` samples of a fixed class-stratified order, as a ``Subset`` with ``.targets``."""
    import torch

    from .datasets import stratified_prefix

    labels = labels_of(ds)
    idx = stratified_prefix(labels, n) if labels is not None else np.arange(n)
    sub = torch.utils.data.Subset(ds, idx.tolist())
    if labels is not None:
        sub.targets = labels[idx]  # type: ignore[attr-defined]
    classes = getattr(ds, "classes", None)
    if classes is not None:
        sub.classes = classes  # type: ignore[attr-defined]
    return sub


def input_shape(ds: Any) -> Tuple[int, ...]:
    """Shape of one input (e.g. ``(1, 28, 28)``), from the first item."""
    item = ds[0]
    x = item[0] if isinstance(item, (tuple, list)) else item
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 3:
        raise PruneDataError(f"the dataset's inputs have shape {shape}; the built-in models take images (C, H, W). "
                             "Use your own model through the Python API for other inputs")
    return shape


def num_classes(ds: Any) -> int:
    classes = getattr(ds, "classes", None)
    lab = labels_of(ds)
    n = int(lab.max()) + 1 if lab is not None and lab.size else 0
    return max(n, len(classes) if classes is not None else 0) or 10
