"""Transfer: pre-train on a pruned set of one task, fine-tune on another (AdaPruner, Table 2)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .._optional import require
from ..datasets import TensorSamples
from ..errors import PruneDataError
from ..progress import progress
from ..search_space import build_architecture, check_architectures
from ..selection import Selection
from .common import (IndexSubset, Recipe, Result, as_seeds, input_kwargs, kept_indices, mean_std, random_subset,
                     required_labels, train_and_test)


def digits_task(*, side: int = 28, test_fraction: float = 0.5, seed: int = 0) -> Tuple[Any, Any]:
    """scikit-learn's bundled 8x8 digits (1797 images, no download), upsampled to ``side`` x ``side``
    and standardised, split into a stratified (train, test) pair of datasets with ``.targets``."""
    load_digits = require("sklearn.datasets", extra="eval", purpose="the digits transfer task").load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target, dtype=torch.long)
    tr, te = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=d.target)
    return TensorSamples(x[tr], y[tr]), TensorSamples(x[te], y[te])


def class_split(dataset: Any, classes: Sequence[int], *, per_class: Optional[int] = None, seed: int = 0,
                within: Optional[np.ndarray] = None) -> Any:
    """The samples of ``classes`` with labels renumbered ``0..len(classes)-1`` (optionally only
    ``per_class`` random ones per class, or only indices in ``within``)."""
    labels = required_labels(dataset)
    classes = [int(c) for c in classes]
    pool = np.arange(labels.size) if within is None else np.asarray(within, dtype=np.int64)
    keep = pool[np.isin(labels[pool], classes)]
    if per_class is not None:
        rng = np.random.default_rng(seed)
        parts = []
        for c in classes:
            ic = keep[labels[keep] == c]
            if ic.size < per_class:
                raise PruneDataError(f"class {c} has only {ic.size} samples, fewer than per_class={per_class}")
            parts.append(rng.choice(ic, per_class, replace=False))
        keep = np.sort(np.concatenate(parts))
    if keep.size == 0:
        raise PruneDataError(f"no sample of classes {classes} in the dataset")
    return IndexSubset(dataset, keep, label_map={c: i for i, c in enumerate(classes)})


def transfer_sets(selection: Selection, dataset: Any, *, source_classes: Optional[Sequence[int]] = None,
                  seed: int = 0) -> Dict[str, Any]:
    """Pre-training sets built from a selection: the selection (restricted to ``source_classes`` when
    given), a class-balanced random subset of the same size of the same pool, and the whole pool."""
    kept = kept_indices(selection, dataset, f"the selection of method {selection.method!r}")
    labels = required_labels(dataset)
    if source_classes is None:
        pool = np.arange(labels.size)
        mk = lambda ix: IndexSubset(dataset, ix)  # noqa: E731
    else:
        pool = np.flatnonzero(np.isin(labels, list(source_classes)))
        kept = kept[np.isin(labels[kept], list(source_classes))]
        mk = lambda ix: class_split(dataset, source_classes, within=ix)  # noqa: E731
    if kept.size == 0:
        raise PruneDataError("the selection keeps no sample of the source classes")
    rnd = pool[random_subset(labels[pool], kept.size, seed=seed + 555)]
    return {f"{selection.method}": mk(kept), "random": mk(rnd), "full": mk(pool)}


@dataclass
class TransferResult(Result):
    """Target-task test accuracy after pre-training on each source set and fine-tuning (AdaPruner Table 2)."""

    architecture: str
    sizes: Dict[str, int]
    accuracy: Dict[str, Dict[str, Any]]
    pretrain_accuracy: Dict[str, float]
    recipe_pretrain: Dict[str, Any]
    recipe_finetune: Dict[str, Any]
    seeds: List[int]
    target: str = "target"
    kind = "transfer"
    plotter = "plot_transfer"

    def table(self) -> str:
        lines = [f"transfer to {self.target}, {self.architecture}, {len(self.seeds)} seeds",
                 f"{'pre-trained on':<16}{'samples':>8}{'target acc %':>16}{'source acc %':>14}"]
        for name, a in self.accuracy.items():
            src = self.pretrain_accuracy.get(name)
            lines.append(f"{name:<16}{self.sizes.get(name, 0):>8}{100 * a['mean']:>9.2f}±{100 * a['std']:<6.2f}"
                         f"{'-' if src is None else f'{100 * src:.2f}':>14}")
        return "\n".join(lines)


def transfer(pretrain_sets: Mapping[str, Any], target_train: Any, target_test: Any, *, architecture: str = "cnn",
             source_test: Optional[Any] = None, pretrain_epochs: int = 3, finetune_epochs: int = 3,
             seeds: Union[int, Sequence[int]] = 2, batch_size: int = 128, lr: float = 0.05, finetune_lr: float = 0.01,
             device: str = "cpu", include_scratch: bool = True, target_name: str = "target",
             show_progress: bool = True) -> TransferResult:
    """Pre-train ``architecture`` on each of ``pretrain_sets`` (e.g. :func:`transfer_sets`), replace its
    head ``.fc`` and fine-tune all weights on ``target_train``; report ``target_test`` accuracy.
    ``include_scratch`` adds a run without pre-training as the floor."""
    check_architectures([architecture])
    if not pretrain_sets:
        raise PruneDataError("give at least one pre-training set")
    seed_list = as_seeds(seeds)
    rec_pre = Recipe(epochs=pretrain_epochs, batch_size=batch_size, lr=lr, device=device)
    rec_ft = Recipe(epochs=finetune_epochs, batch_size=batch_size, lr=finetune_lr, device=device)
    tgt_classes = int(required_labels(target_train).max()) + 1
    acc: Dict[str, Dict[str, Any]] = {}
    pre_acc: Dict[str, float] = {}
    sizes = {n: len(d) for n, d in pretrain_sets.items()}
    items = list(pretrain_sets.items()) + ([("scratch", None)] if include_scratch else [])
    for name, src in items:
        vals, src_vals = [], []
        for seed in progress(seed_list, desc=f"transfer {name}", disable=not show_progress):
            torch.manual_seed(seed)
            if src is not None:
                src_classes = int(required_labels(src).max()) + 1
                model = build_architecture(architecture, num_classes=src_classes, **input_kwargs(src))
                r = train_and_test(model, src, source_test if source_test is not None else src, rec_pre, seed=seed,
                                   desc=f"pre-train {name}")
                src_vals.append(r["accuracy"])
            else:
                model = build_architecture(architecture, num_classes=tgt_classes, **input_kwargs(target_train))
            fc = getattr(model, "fc", None)
            if not isinstance(fc, torch.nn.Linear):
                raise PruneDataError(f"architecture {architecture!r} has no linear head .fc to replace for fine-tuning")
            model.fc = torch.nn.Linear(fc.in_features, tgt_classes).to(device)
            r = train_and_test(model, target_train, target_test, rec_ft, seed=seed, desc=f"fine-tune {name}")
            vals.append(r["accuracy"])
        m, sd = mean_std(vals)
        acc[name] = {"mean": m, "std": sd, "accuracies": vals}
        if src_vals:
            pre_acc[name] = float(np.mean(src_vals))
    return TransferResult(architecture=architecture, sizes=sizes, accuracy=acc, pretrain_accuracy=pre_acc,
                          recipe_pretrain=rec_pre.as_dict(), recipe_finetune=rec_ft.as_dict(), seeds=seed_list,
                          target=target_name)
