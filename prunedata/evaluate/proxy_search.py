"""Proxy-set search: rank a ConvNet search space on small proxy sets vs the full data (Yang et al. 2023, Table 1)."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .._optional import require
from ..errors import PruneDataError
from ..progress import progress
from ..search_space import ConvNetSpec, search_space
from ..selection import Selection
from .common import (IndexSubset, Recipe, Result, input_kwargs, kept_indices, random_subset, required_labels,
                     train_and_test)

logger = logging.getLogger(__name__)


def make_proxies(methods: Sequence[str], dataset: Any, *, per_class: int = 100, config=None,
                 on_error: str = "skip") -> Tuple[Dict[str, Selection], Dict[str, str]]:
    """Proxy sets of ``per_class`` samples per class made by each registered method (class-balanced).

    Returns ``(proxies, skipped)``; a method that is not registered, or fails with ``on_error="skip"``,
    lands in ``skipped`` with the reason.
    """
    from ..methods.registry import MethodConfig, available_methods, select

    labels = required_labels(dataset)
    _check_per_class(per_class, labels)
    classes = np.unique(labels)
    keep_ratio = per_class * classes.size / labels.size
    config = dataclasses.replace(config or MethodConfig(num_classes=int(labels.max()) + 1), class_balanced=True)
    known = available_methods()
    proxies: Dict[str, Selection] = {}
    skipped: Dict[str, str] = {}
    for m in methods:
        if m not in known:
            skipped[m] = f"not registered (known: {', '.join(known)})"
            continue
        t0 = time.perf_counter()
        try:
            sel = select(m, dataset, keep_ratio, config=config)
        except Exception as e:  # noqa: BLE001 - a broken method must not sink the whole comparison
            if on_error != "skip":
                raise
            skipped[m] = f"{type(e).__name__}: {e}"
            logger.warning("proxy method %s failed: %s", m, e)
            continue
        sel.metrics.setdefault("seconds", round(time.perf_counter() - t0, 2))
        proxies[m] = sel
    return proxies, skipped


def _check_per_class(per_class: int, labels: np.ndarray) -> None:
    classes, counts = np.unique(labels, return_counts=True)
    if int(per_class) < 1:
        raise PruneDataError(f"a proxy of {per_class} samples per class cannot hold every class; use per_class >= 1 "
                             "(the paper uses 100)")
    if per_class > counts.min():
        raise PruneDataError(f"per_class={per_class} is more than the smallest class has ({counts.min()} samples "
                             f"of class {classes[counts.argmin()]}); use per_class <= {counts.min()}")


def class_balanced_by_scores(selection: Selection, labels: np.ndarray, per_class: int) -> Selection:
    """A class-balanced proxy from a selection's per-sample scores: the ``per_class`` highest-scoring
    samples of every class (e.g. AdaPruner's mask logits, which learn their own class balance and can
    leave a class out of a small proxy)."""
    if selection.scores is None:
        raise PruneDataError(f"selection of method {selection.method!r} has no per-sample scores to rank by")
    labels = np.asarray(labels)
    _check_per_class(per_class, labels)
    if labels.size != selection.dataset_size:
        raise PruneDataError(f"{labels.size} labels for a selection of a {selection.dataset_size}-sample dataset")
    kept = np.concatenate([ic[np.argsort(-selection.scores[ic], kind="stable")[:per_class]]
                           for ic in (np.flatnonzero(labels == c) for c in np.unique(labels))])
    params = dict(selection.params, class_balanced_by_scores=per_class)
    return Selection(kept=kept, dataset_size=selection.dataset_size, method=selection.method, params=params,
                     fingerprint=selection.fingerprint, scores=selection.scores, score_name=selection.score_name)


@dataclass
class ProxySearchResult(Result):
    """Accuracies of every architecture on every proxy and on the full data, and the Table 1 figures.

    ``spearman[p]`` is :func:`scipy.stats.spearmanr` between the proxy's and the full data's test
    accuracies over all architectures; ``spearman_top[p]`` the same over the proxy's ``top_k`` best
    (the paper's definition); ``picked[p]`` the architecture the proxy ranks first and
    ``picked_full_accuracy[p]`` its full-data accuracy; ``time_ratio[p]`` the proxy search's training
    time over the full search's.
    """

    architectures: List[str]
    full_accuracy: List[float]
    full_seconds: float
    proxy_accuracy: Dict[str, List[float]]
    proxy_seconds: Dict[str, float]
    proxy_sizes: Dict[str, int]
    dataset_size: int
    recipe_full: Dict[str, Any]
    recipe_proxy: Dict[str, Any]
    top_k: int = 10
    spearman: Dict[str, float] = field(default_factory=dict)
    spearman_p: Dict[str, float] = field(default_factory=dict)
    spearman_top: Dict[str, float] = field(default_factory=dict)
    picked: Dict[str, str] = field(default_factory=dict)
    picked_full_accuracy: Dict[str, float] = field(default_factory=dict)
    time_ratio: Dict[str, float] = field(default_factory=dict)
    kind = "proxy_search"
    plotter = "plot_proxy_search"

    def __post_init__(self) -> None:
        spearmanr = require("scipy.stats", extra="eval", purpose="proxy-search rank correlation").spearmanr

        full = np.asarray(self.full_accuracy)
        for p, accs in self.proxy_accuracy.items():
            a = np.asarray(accs)
            rho = spearmanr(a, full)
            self.spearman[p] = float(rho.statistic)
            self.spearman_p[p] = float(rho.pvalue)
            top = np.argsort(-a, kind="stable")[: max(2, min(self.top_k, a.size))]
            self.spearman_top[p] = float(spearmanr(a[top], full[top]).statistic)
            best = int(np.argmax(a))
            self.picked[p] = self.architectures[best]
            self.picked_full_accuracy[p] = float(full[best])
            self.time_ratio[p] = self.proxy_seconds[p] / self.full_seconds if self.full_seconds else float("nan")

    @property
    def best_full_accuracy(self) -> float:
        return float(np.max(self.full_accuracy))

    @property
    def best_architecture(self) -> str:
        return self.architectures[int(np.argmax(self.full_accuracy))]

    def to_dict(self) -> Dict[str, Any]:
        return dict(super().to_dict(), best_architecture=self.best_architecture,
                    best_full_accuracy=self.best_full_accuracy)

    def table(self) -> str:
        lines = [f"proxy-set architecture search over {len(self.architectures)} ConvNets; full data "
                 f"{self.dataset_size} samples, best {self.best_architecture} at {100 * self.best_full_accuracy:.2f}%",
                 f"{'proxy':<12}{'size':>6}{'spearman':>10}{'p-value':>9}{f'top{self.top_k} rho':>10}"
                 f"{'picked arch full acc %':>24}{'search s':>10}{'time ratio':>11}  picked"]
        for p in self.proxy_accuracy:
            lines.append(f"{p:<12}{self.proxy_sizes[p]:>6}{self.spearman[p]:>10.3f}{self.spearman_p[p]:>9.3f}"
                         f"{self.spearman_top[p]:>10.3f}{100 * self.picked_full_accuracy[p]:>24.2f}"
                         f"{self.proxy_seconds[p]:>10.1f}{self.time_ratio[p]:>11.3f}  {self.picked[p]}")
        lines.append(f"{'whole data':<12}{self.dataset_size:>6}{1.0:>10.3f}{'':>9}{1.0:>10.3f}"
                     f"{100 * self.best_full_accuracy:>24.2f}{self.full_seconds:>10.1f}{1.0:>11.3f}  {self.best_architecture}")
        lines.append("(spearman: scipy.stats.spearmanr of proxy vs full test accuracy over all nets; top-k rho: over the "
                     "proxy's k best, as in Yang et al. 2023 Table 1; time ratio: proxy / full training time)")
        return "\n".join(lines)


def proxy_search(proxies: Mapping[str, Union[Selection, Sequence[int], np.ndarray]], dataset: Any, test_dataset: Any,
                 *, space: Union[str, Sequence[Union[str, ConvNetSpec]]] = "cpu", proxy_epochs: int = 10,
                 full_epochs: int = 3, batch_size: int = 64, lr: float = 0.05, seed: int = 0, device: str = "cpu",
                 top_k: int = 10, add_random: bool = True, full_accuracy: Optional[Mapping[str, Tuple[float, float]]] = None,
                 show_progress: bool = True) -> ProxySearchResult:
    """Train every net of ``space`` on each proxy set and on the full ``dataset``; compare the rankings.

    ``proxies`` maps a name to a selection (or indices) of ``dataset``; each must hold every class.
    With ``add_random`` a class-balanced random proxy of the size of the first one is added as
    ``"random"`` unless one is given. ``full_accuracy`` may pass the full-data results of an earlier
    search (``{arch: (accuracy, seconds)}``) so they are not trained again.
    """
    specs = search_space(space)
    labels = required_labels(dataset)
    classes = np.unique(labels)
    n_classes = int(labels.max()) + 1
    if not proxies and not add_random:
        raise PruneDataError("give at least one proxy set")
    idx: Dict[str, np.ndarray] = {}
    for p, sel in proxies.items():
        kept = kept_indices(sel, dataset, f"proxy {p!r}")
        missing = np.setdiff1d(classes, labels[kept])
        if missing.size:
            raise PruneDataError(f"proxy {p!r} ({kept.size} samples) holds no sample of class(es) "
                                 f"{missing.tolist()}: a proxy must hold every class; make it with at least one "
                                 "sample per class (per_class >= 1, class_balanced=True)")
        idx[p] = kept
    if add_random and "random" not in idx:
        size = next(iter(idx.values())).size if idx else 100 * classes.size
        if size < classes.size:
            raise PruneDataError(f"a random proxy of {size} samples cannot hold all {classes.size} classes")
        idx = {"random": random_subset(labels, size, seed=seed + 777), **idx}
    rec_full = Recipe(epochs=full_epochs, batch_size=batch_size, lr=lr, device=device)
    rec_proxy = Recipe(epochs=proxy_epochs, batch_size=batch_size, lr=lr, device=device)
    in_kw = input_kwargs(dataset)

    def search(data: Any, recipe: Recipe, name: str, known: Mapping[str, Tuple[float, float]]
               ) -> Tuple[List[float], float]:
        """Test accuracy of every net of the space trained on ``data`` (or taken from ``known``), and the
        total training seconds."""
        accs, secs = [], 0.0
        for spec in progress(specs, desc=f"search on {name}", disable=not show_progress):
            if spec.name in known:
                a, t = known[spec.name]
            else:
                torch.manual_seed(seed)
                r = train_and_test(spec.build(n_classes, **in_kw), data, test_dataset, recipe, seed=seed,
                                   desc=f"{name} {spec.name}")
                a, t = r["accuracy"], r["seconds"]
            accs.append(float(a))
            secs += t
        logger.info("%s: searched %d nets in %.1fs", name, len(specs), secs)
        return accs, secs

    full_acc, full_sec = search(dataset, rec_full, "full data", full_accuracy or {})
    proxy_acc: Dict[str, List[float]] = {}
    proxy_sec: Dict[str, float] = {}
    for p, ix in idx.items():
        proxy_acc[p], proxy_sec[p] = search(IndexSubset(dataset, ix), rec_proxy, f"proxy {p}", {})
    return ProxySearchResult(architectures=[s.name for s in specs], full_accuracy=full_acc, full_seconds=full_sec,
                             proxy_accuracy=proxy_acc, proxy_seconds=proxy_sec,
                             proxy_sizes={p: int(ix.size) for p, ix in idx.items()}, dataset_size=len(dataset),
                             recipe_full=rec_full.as_dict(), recipe_proxy=rec_proxy.as_dict(), top_k=top_k)
