"""Unseen architectures: several architectures on the selection vs random vs full data (Yang et al. 2023, Fig. 3)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .._io import PathLike
from ..errors import PruneDataError
from ..progress import progress
from ..search_space import build_architecture, check_architectures
from ..selection import Selection
from .common import (DEFAULT_ARCHITECTURES, IndexSubset, Recipe, Result, RunCache, as_seeds, input_kwargs,
                     kept_indices, mean_std, proxy_architecture, random_subset, required_labels, train_and_test)

logger = logging.getLogger(__name__)


@dataclass
class EvaluationResult(Result):
    """Runs and per-architecture summary of :func:`evaluate_selection`.

    ``summary[arch]`` has ``unseen`` (the architecture did not make the selection), ``selection``,
    ``random`` and ``full`` (each ``mean``, ``std``, ``seconds`` per run, ``n_train``),
    ``diff_vs_random`` (mean accuracy difference), ``noise`` (the larger of the two stds) and
    ``beats_random`` (``diff_vs_random > 0``).
    """

    method: str
    dataset_size: int
    num_kept: int
    proxy_architecture: Optional[str]
    architectures: List[str]
    seeds: List[int]
    recipe: Dict[str, Any]
    runs: List[Dict[str, Any]]
    summary: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    dataset: Optional[str] = None
    kind = "evaluation"
    plotter = "plot_evaluation"

    @property
    def keep_ratio(self) -> float:
        return self.num_kept / self.dataset_size if self.dataset_size else 0.0

    @property
    def beats_random(self) -> Dict[str, bool]:
        return {a: bool(s["beats_random"]) for a, s in self.summary.items()}

    def to_dict(self) -> Dict[str, Any]:
        return dict(super().to_dict(), keep_ratio=round(self.keep_ratio, 6))

    def table(self) -> str:
        head = (f"method {self.method}: {self.num_kept} of {self.dataset_size} kept ({100 * self.keep_ratio:.1f}%), "
                f"{len(self.seeds)} seeds, {self.recipe.get('epochs')} epochs; made with "
                f"{self.proxy_architecture or 'unknown architecture'}")
        cols = f"{'architecture':<14}{'unseen':>7}{'selection':>16}{'random':>16}{'diff':>8}{'beats':>7}" \
               f"{'full':>16}{'s/run sel':>10}{'s/run full':>11}"
        lines = [head, cols]
        for a, s in self.summary.items():
            def ms(k):
                return f"{100 * s[k]['mean']:6.2f}±{100 * s[k]['std']:4.2f}" if k in s else "-"
            verdict = ("yes" if s["beats_random"] else "no") + ("*" if abs(s["diff_vs_random"]) <= s["noise"] else "")
            lines.append(f"{a:<14}{'yes' if s['unseen'] else 'no':>7}{ms('selection'):>16}{ms('random'):>16}"
                         f"{100 * s['diff_vs_random']:+8.2f}{verdict:>7}{ms('full'):>16}"
                         f"{s['selection']['seconds']:10.1f}"
                         f"{s['full']['seconds'] if 'full' in s else float('nan'):11.1f}")
        lines.append("(accuracy % mean±std over seeds; diff = selection - random in points; "
                     "* = |diff| within one std, i.e. not distinguishable from noise)")
        return "\n".join(lines)


def evaluate_selection(selection: Selection, dataset: Any, test_dataset: Any, *,
                       architectures: Optional[Sequence[str]] = None, seeds: Union[int, Sequence[int]] = 3,
                       epochs: int = 3, batch_size: int = 128, lr: float = 0.05, device: str = "cpu",
                       include_random: bool = True, include_full: bool = True, num_classes: Optional[int] = None,
                       cache: Optional[Dict[Any, Dict[str, Any]]] = None, show_progress: bool = True,
                       dataset_name: Optional[str] = None, cache_dir: Optional[PathLike] = None) -> EvaluationResult:
    """Train every architecture on the selection, on class-balanced random subsets of the same size (a
    new one per seed) and on the full ``dataset``, all with the same recipe, and test on ``test_dataset``.

    ``architectures`` defaults to :data:`DEFAULT_ARCHITECTURES`; architectures that did not make the
    selection are marked ``unseen``. ``cache`` (a dict) lets several evaluations on the same data and
    recipe share their random and full runs (a benchmark comparing methods at one size).
    ``cache_dir`` keeps every run on disk (one small JSON file per run, keyed by the dataset's
    fingerprint, the architecture, the recipe, the seed and the exact training indices), so later
    evaluations with the same recipe reuse the random and full-data runs and any selection already
    trained: an interrupted evaluation resumes where it stopped.
    """
    if not isinstance(selection, Selection):
        raise PruneDataError(f"expected a Selection, got {type(selection).__name__}; load one with Selection.load")
    kept = kept_indices(selection, dataset, f"the selection of method {selection.method!r}")
    if kept.size == 0:
        raise PruneDataError("the selection keeps no samples; nothing to train on")
    archs = check_architectures(architectures or DEFAULT_ARCHITECTURES)
    seed_list = as_seeds(seeds)
    recipe = Recipe(epochs=epochs, batch_size=batch_size, lr=lr, device=device)
    labels = required_labels(dataset)
    n_classes = int(num_classes or int(labels.max()) + 1)
    proxy_arch = proxy_architecture(selection)
    cache = {} if cache is None else cache
    run_cache = RunCache(cache_dir, dataset) if cache_dir is not None else None
    key_base = (len(dataset), tuple(sorted(recipe.as_dict().items())), n_classes)

    subsets: List[Tuple[str, Callable[[int], np.ndarray]]] = [("selection", lambda s: kept)]
    if include_random:
        subsets.append(("random", lambda s: random_subset(labels, kept.size, seed=10_000 + s)))
    if include_full:
        subsets.append(("full", lambda s: np.arange(len(dataset))))
    jobs = [(a, name, fn, s) for a in archs for name, fn in subsets for s in seed_list]
    runs: List[Dict[str, Any]] = []
    for arch, name, fn, seed in progress(jobs, desc=f"evaluate {selection.method}", disable=not show_progress):
        key = (key_base, arch, name, seed, kept.size if name == "random" else None)
        run = cache.get(key) if name != "selection" else None  # random and full-data runs are shared
        if run is None:
            idx = fn(seed)
            if run_cache is not None:
                disk_key = run_cache.key(arch=arch, subset=name, seed=seed, indices=idx, recipe=recipe.as_dict(),
                                         num_classes=n_classes)
                run = run_cache.get(disk_key)
        if run is not None:
            runs.append(dict(run, cached=True))
        else:
            torch.manual_seed(seed)
            model = build_architecture(arch, num_classes=n_classes, **input_kwargs(dataset))
            res = train_and_test(model, IndexSubset(dataset, idx), test_dataset, recipe, seed=seed,
                                 desc=f"{arch}/{name}/seed{seed}")
            run = {"architecture": arch, "subset": name, "seed": seed, "n_train": int(idx.size),
                   "accuracy": res["accuracy"], "loss": res["loss"], "seconds": res["seconds"]}
            logger.info("%s on %s (%d samples, seed %d): acc %.4f in %.1fs", arch, name, idx.size, seed,
                        res["accuracy"], res["seconds"])
            if run_cache is not None:
                run_cache.put(disk_key, run)
            runs.append(run)
        if name != "selection":
            cache[key] = run
    summary: Dict[str, Dict[str, Any]] = {}
    for arch in archs:
        s: Dict[str, Any] = {"unseen": proxy_arch is None or arch != proxy_arch}
        for name, _ in subsets:
            rs = [r for r in runs if r["architecture"] == arch and r["subset"] == name]
            m, sd = mean_std([r["accuracy"] for r in rs])
            s[name] = {"mean": m, "std": sd, "seconds": float(np.mean([r["seconds"] for r in rs])),
                       "n_train": rs[0]["n_train"], "accuracies": [r["accuracy"] for r in rs]}
        if include_random:
            s["diff_vs_random"] = s["selection"]["mean"] - s["random"]["mean"]
            s["noise"] = max(s["selection"]["std"], s["random"]["std"])
            s["beats_random"] = bool(s["diff_vs_random"] > 0)
        else:
            s.update(diff_vs_random=float("nan"), noise=float("nan"), beats_random=False)
        summary[arch] = s
    return EvaluationResult(method=selection.method, dataset_size=selection.dataset_size, num_kept=int(kept.size),
                            proxy_architecture=proxy_arch, architectures=archs, seeds=seed_list,
                            recipe=recipe.as_dict(), runs=runs, summary=summary,
                            dataset=dataset_name or selection.params.get("dataset"))
