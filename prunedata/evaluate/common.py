"""Pieces every evaluation protocol shares: the recipe and its train-and-test run, subsets of a
dataset by index, class-balanced random subsets, the on-disk run cache and the result base class."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import plots
from .._io import PathLike, atomic_write_text
from ..errors import PruneDataError
from ..identity import dataset_fingerprint
from ..labels import labels_of
from ..loop import Recipe, Step, TrainHook, test, train
from ..selection import Selection

logger = logging.getLogger(__name__)

#: evaluated by default; at least two of them differ from whichever one made the selection
DEFAULT_ARCHITECTURES = ("cnn", "cnn_bn", "mlp")


class _Curve(TrainHook):
    """Test accuracy ``evals_per_epoch`` times per epoch, with the training seconds so far (its own
    test passes are not timed, as the loop does not time its hooks)."""

    def __init__(self, model: torch.nn.Module, test_data: Any, recipe: Recipe, evals_per_epoch: int):
        self.model, self.test_data, self.recipe, self.k = model, test_data, recipe, evals_per_epoch
        self.points: List[Tuple[float, float, float]] = []
        self._clock, self._last = 0.0, 0.0

    def before_epoch(self, epoch: int) -> None:
        self._last = time.perf_counter()

    def after_step(self, step: Step) -> None:
        self._clock += time.perf_counter() - self._last
        if step.index in {max(1, round(step.steps_per_epoch * (k + 1) / self.k)) for k in range(self.k)}:
            acc = test(self.model, self.test_data, batch_size=self.recipe.eval_batch_size,
                       device=self.recipe.device)["accuracy"]
            self.points.append((self._clock, step.epoch + step.index / step.steps_per_epoch, acc))
        self._last = time.perf_counter()


def train_and_test(model: torch.nn.Module, train_data: Any, test_data: Any, recipe: Recipe, *, seed: int = 0,
                   evals_per_epoch: int = 0, show_progress: bool = False, desc: str = "train") -> Dict[str, Any]:
    """Train ``model`` with ``recipe`` (seeded with ``seed``) and test it; wall time counts training only.

    With ``evals_per_epoch > 0`` the test accuracy is also taken that many times per epoch, giving a
    curve of ``(training seconds, epoch, accuracy)`` (the test passes are not timed).
    """
    if len(train_data) == 0:
        raise PruneDataError("cannot train on an empty set: the selection keeps no samples")
    curve = _Curve(model, test_data, recipe, evals_per_epoch) if evals_per_epoch > 0 else None
    hooks: List[TrainHook] = [curve] if curve is not None else []
    out = train(model, train_data, recipe.replace(seed=seed), hooks=hooks, drop_singleton_batch=True,
                seed_globals="torch", show_progress=show_progress, desc=desc)
    res = test(model, test_data, batch_size=recipe.eval_batch_size, device=recipe.device)
    res.pop("n", None)
    res.update(seconds=out["seconds"], n_train=len(train_data), curve=curve.points if curve is not None else [])
    if not math.isfinite(res["loss"]):
        logger.warning("%s: test loss is not finite (training diverged?)", desc)
    return res


class IndexSubset(torch.utils.data.Dataset):
    """``dataset[indices]`` with ``targets`` and the batched ``__getitems__`` of the base dataset."""

    def __init__(self, dataset: Any, indices: Sequence[int], label_map: Optional[Dict[int, int]] = None):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.label_map = label_map
        base = labels_of(dataset)
        self._targets = None if base is None else base[self.indices]
        if self._targets is not None and label_map is not None:
            self._targets = np.array([label_map[int(t)] for t in self._targets], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.indices.size)

    def _fix(self, item):
        return item if self.label_map is None else (item[0], self.label_map[int(item[1])])

    def __getitem__(self, i: int):
        return self._fix(self.dataset[int(self.indices[i])])

    def __getitems__(self, items: Sequence[int]):
        idx = [int(self.indices[i]) for i in items]
        base = getattr(self.dataset, "__getitems__", None)
        got = base(idx) if base is not None else [self.dataset[i] for i in idx]
        return [self._fix(it) for it in got]

    @property
    def targets(self):
        if self._targets is None:
            raise AttributeError("the base dataset has no targets")
        return torch.as_tensor(self._targets)


def required_labels(dataset: Any) -> np.ndarray:
    return labels_of(dataset, required=True, what="dataset (evaluation draws class-balanced subsets by label)")


def random_subset(labels: np.ndarray, size: int, *, seed: int = 0, class_balanced: bool = True) -> np.ndarray:
    """``size`` random indices; with ``class_balanced`` every class gets its share of ``size``
    (proportional to its frequency, largest-remainder rounding)."""
    labels = np.asarray(labels)
    n = labels.size
    if not 0 < size <= n:
        raise PruneDataError(f"cannot draw {size} of {n} samples")
    rng = np.random.default_rng(seed)
    if not class_balanced:
        return np.sort(rng.choice(n, size=size, replace=False))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / n
    quota = np.floor(exact).astype(int)
    rest = size - quota.sum()
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[:rest]] += 1
    out = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in zip(classes, quota) if q]
    return np.sort(np.concatenate(out))


def proxy_architecture(sel: Selection) -> Optional[str]:
    proxy = sel.params.get("proxy")
    if isinstance(proxy, dict) and proxy.get("model"):
        return str(proxy["model"])
    return sel.params.get("model") if isinstance(sel.params.get("model"), str) else None


def kept_indices(sel: Union[Selection, Sequence[int], np.ndarray], dataset: Any, what: str) -> np.ndarray:
    if isinstance(sel, Selection):
        if sel.id_kind != "index":
            raise PruneDataError(f"{what} is keyed by sample key (a stream selection); evaluation needs an index "
                                 "selection of a map-style dataset")
        sel.check(dataset)
        return sel.kept
    idx = np.unique(np.asarray(sel, dtype=np.int64).reshape(-1))
    if idx.size and (idx[0] < 0 or idx[-1] >= len(dataset)):
        raise PruneDataError(f"{what} has indices outside [0, {len(dataset)}): it was made for another dataset")
    return idx


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def as_seeds(seeds: Union[int, Sequence[int]]) -> List[int]:
    out = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not out:
        raise PruneDataError("give at least one seed")
    return out


class Result:
    """Shared behaviour of the result dataclasses: ``to_dict`` (``kind`` and the fields), JSON, atomic
    ``save`` and ``plot`` (a PNG drawn by the :mod:`prunedata.plots` function named ``plotter``)."""

    kind = "result"
    plotter = ""

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=json_default) + "\n"

    def save(self, path: PathLike):
        return atomic_write_text(path, self.to_json())

    def plot(self, path: PathLike) -> Path:
        return getattr(plots, self.plotter)(self, path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(\n{self.table()}\n)"

    def table(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError


def json_default(o: Any):
    """numpy scalars and arrays as plain numbers and lists, anything else as its text."""
    return o.tolist() if isinstance(o, (np.generic, np.ndarray)) else str(o)


class RunCache:
    """Training runs kept on disk: one JSON file per (dataset, architecture, recipe, seed, indices)."""

    def __init__(self, directory: PathLike, dataset: Any):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PruneDataError(f"cannot create the evaluation cache folder {self.directory}: {e}; give a "
                                 "writable --cache-dir") from None
        self.fingerprint = dataset_fingerprint(dataset)

    def key(self, *, arch: str, subset: str, seed: int, indices: np.ndarray, recipe: Dict[str, Any],
            num_classes: int) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"fingerprint": self.fingerprint, "arch": arch, "seed": int(seed), "recipe": recipe,
                             "num_classes": int(num_classes), "version": 1}, sort_keys=True).encode())
        h.update(np.ascontiguousarray(np.asarray(indices, dtype=np.int64)).tobytes())
        return f"{arch}-{subset}-s{int(seed)}-n{int(np.asarray(indices).size)}-{h.hexdigest()[:20]}"

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        path = self.directory / f"{key}.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            logger.warning("evaluation cache entry %s is unreadable; training the run again", path)
            return None

    def put(self, key: str, run: Dict[str, Any]) -> None:
        atomic_write_text(self.directory / f"{key}.json", json.dumps(run, default=json_default) + "\n")


def input_kwargs(dataset: Any) -> Dict[str, int]:
    """``in_channels`` and ``side`` of the dataset's images, for :func:`build_architecture`."""
    x = dataset[0][0]
    if hasattr(x, "shape") and len(x.shape) == 3:
        return {"in_channels": int(x.shape[0]), "side": int(x.shape[-1])}
    return {"in_channels": 1, "side": 28}
