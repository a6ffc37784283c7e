"""Judge a selection the way the papers do.

* :func:`evaluate_selection` — train several architectures (by default including ones that did not
  make the selection) on the selection, on class-balanced random subsets of the same size and on the
  full data, with one recipe and several seeds (Yang et al. 2023, Fig. 3: unseen architectures).
* :func:`proxy_search` — train a ConvNet search space on small proxy sets and on the full data and
  compare the rankings with Spearman's rho (Yang et al. 2023, Table 1).
* :func:`time_to_accuracy` — test accuracy against training wall time, full data against a pruned set
  (Yang et al. 2023, Fig. 4).
* :func:`transfer` — pre-train on a pruned set of one task, fine-tune on another (AdaPruner, Table 2).

Every result is an object with plain attributes, ``table()``, ``to_dict()``, ``to_json()``,
``save(path)`` (atomic) and ``plot(path)`` (PNG, see :mod:`prunedata.plots`). Nothing is downloaded:
the transfer target ``digits_task`` is scikit-learn's bundled digits.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ._io import PathLike, atomic_write_text
from .datasets import labels_of
from .errors import PruneDataError
from .progress import progress
from .search_space import ConvNetSpec, build_architecture, check_architectures, search_space
from .selection import Selection

logger = logging.getLogger(__name__)

__all__ = ["Recipe", "RunCache", "input_kwargs", "EvaluationResult", "evaluate_selection", "ProxySearchResult", "proxy_search",
           "make_proxies", "class_balanced_by_scores", "TimeCurveResult", "time_to_accuracy", "TransferResult", "transfer",
           "transfer_sets", "digits_task", "class_split", "random_subset", "DEFAULT_ARCHITECTURES"]

#: evaluated by default; at least two of them differ from whichever one made the selection
DEFAULT_ARCHITECTURES = ("cnn", "cnn_bn", "mlp")


# =========================================================================== training recipe
@dataclass
class Recipe:
    """One training recipe shared by every run of an evaluation (SGD, momentum 0.9, cosine)."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    device: str = "cpu"
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        if int(self.epochs) < 1:
            raise PruneDataError(f"epochs must be >= 1, got {self.epochs}")
        if int(self.batch_size) < 1:
            raise PruneDataError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise PruneDataError(f"lr must be > 0, got {self.lr}")

    def as_dict(self) -> Dict[str, Any]:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "device": self.device}


@torch.no_grad()
def _test(model: torch.nn.Module, dataset: Any, recipe: Recipe) -> Dict[str, float]:
    was_training = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for x, y in DataLoader(dataset, batch_size=recipe.eval_batch_size):
        x, y = x.to(recipe.device), y.to(recipe.device)
        out = model(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        total += int(y.numel())
    model.train(was_training)
    return {"accuracy": correct / max(total, 1), "loss": loss_sum / max(total, 1)}


def train_and_test(model: torch.nn.Module, train_data: Any, test_data: Any, recipe: Recipe, *, seed: int = 0,
                   evals_per_epoch: int = 0, show_progress: bool = False, desc: str = "train") -> Dict[str, Any]:
    """Train ``model`` with ``recipe`` and test it; wall time counts training only.

    With ``evals_per_epoch > 0`` the test accuracy is also taken that many times per epoch, giving a
    curve of ``(training seconds, epoch, accuracy)`` (the test passes are not timed).
    """
    if len(train_data) == 0:
        raise PruneDataError("cannot train on an empty set: the selection keeps no samples")
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    model.to(recipe.device).train()
    g = torch.Generator()
    g.manual_seed(seed)
    # a last batch of one sample breaks batch norm in training mode: drop it (it is one sample)
    drop_last = len(train_data) % recipe.batch_size == 1 and len(train_data) > 1
    loader = DataLoader(train_data, batch_size=recipe.batch_size, shuffle=True, generator=g, drop_last=drop_last)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    steps_per_epoch = len(loader)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, recipe.epochs * steps_per_epoch))
    marks = set()
    if evals_per_epoch > 0:
        marks = {max(1, round(steps_per_epoch * (k + 1) / evals_per_epoch)) for k in range(evals_per_epoch)}
    curve: List[Tuple[float, float, float]] = []
    seconds = 0.0
    for epoch in range(recipe.epochs):
        t0 = time.perf_counter()
        for step, (x, y) in enumerate(progress(loader, desc=f"{desc} {epoch + 1}/{recipe.epochs}",
                                               disable=not show_progress), start=1):
            x, y = x.to(recipe.device), y.to(recipe.device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step in marks:
                seconds += time.perf_counter() - t0
                acc = _test(model, test_data, recipe)["accuracy"]
                curve.append((seconds, epoch + step / steps_per_epoch, acc))
                t0 = time.perf_counter()
        seconds += time.perf_counter() - t0
    res = _test(model, test_data, recipe)
    res.update(seconds=seconds, n_train=len(train_data), curve=curve)
    if not math.isfinite(res["loss"]):
        logger.warning("%s: test loss is not finite (training diverged?)", desc)
    return res


# =========================================================================== subsets
class _IndexSubset(torch.utils.data.Dataset):
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
        if self.label_map is None:
            return item
        x, y = item
        return x, self.label_map[int(y)]

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


def _labels(dataset: Any, what: str = "dataset") -> np.ndarray:
    lab = labels_of(dataset)
    if lab is None:
        raise PruneDataError(f"the {what} does not expose its labels (.targets); evaluation needs them to draw "
                             "class-balanced random subsets")
    return lab


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


def _proxy_architecture(sel: Selection) -> Optional[str]:
    proxy = sel.params.get("proxy")
    if isinstance(proxy, dict) and proxy.get("model"):
        return str(proxy["model"])
    return sel.params.get("model") if isinstance(sel.params.get("model"), str) else None


def _kept(sel: Union[Selection, Sequence[int], np.ndarray], dataset: Any, what: str) -> np.ndarray:
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


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _seeds(seeds: Union[int, Sequence[int]]) -> List[int]:
    out = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not out:
        raise PruneDataError("give at least one seed")
    return out


class _Result:
    """Shared JSON / save behaviour of the result objects."""

    kind = "result"

    def to_dict(self) -> Dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n"

    def save(self, path: PathLike):
        return atomic_write_text(path, self.to_json())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(\n{self.table()}\n)"

    def table(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# =========================================================================== unseen architectures
@dataclass
class EvaluationResult(_Result):
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

    @property
    def keep_ratio(self) -> float:
        return self.num_kept / self.dataset_size if self.dataset_size else 0.0

    @property
    def beats_random(self) -> Dict[str, bool]:
        return {a: bool(s["beats_random"]) for a, s in self.summary.items()}

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "method": self.method, "dataset": self.dataset, "dataset_size": self.dataset_size,
                "num_kept": self.num_kept, "keep_ratio": round(self.keep_ratio, 6),
                "proxy_architecture": self.proxy_architecture, "architectures": self.architectures,
                "seeds": self.seeds, "recipe": self.recipe, "summary": self.summary, "runs": self.runs}

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

    def plot(self, path: PathLike):
        from .plots import plot_evaluation

        return plot_evaluation(self, path)


class RunCache:
    """Training runs kept on disk: one JSON file per (dataset, architecture, recipe, seed, indices)."""

    def __init__(self, directory: PathLike, dataset: Any):
        from .identity import dataset_fingerprint

        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PruneDataError(f"cannot create the evaluation cache folder {self.directory}: {e}; give a "
                                 "writable --cache-dir") from None
        self.fingerprint = dataset_fingerprint(dataset)

    def key(self, *, arch: str, subset: str, seed: int, indices: np.ndarray, recipe: Dict[str, Any],
            num_classes: int) -> str:
        import hashlib

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
        atomic_write_text(self.directory / f"{key}.json", json.dumps(run, default=_json_default) + "\n")


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
    kept = _kept(selection, dataset, f"the selection of method {selection.method!r}")
    if kept.size == 0:
        raise PruneDataError("the selection keeps no samples; nothing to train on")
    archs = check_architectures(architectures or DEFAULT_ARCHITECTURES)
    seed_list = _seeds(seeds)
    recipe = Recipe(epochs=epochs, batch_size=batch_size, lr=lr, device=device)
    labels = _labels(dataset)
    n_classes = int(num_classes or int(labels.max()) + 1)
    proxy_arch = _proxy_architecture(selection)
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
        if name != "selection" and key in cache:
            runs.append(dict(cache[key], cached=True))
            continue
        idx = fn(seed)
        disk_key = None
        if run_cache is not None:
            disk_key = run_cache.key(arch=arch, subset=name, seed=seed, indices=idx, recipe=recipe.as_dict(),
                                     num_classes=n_classes)
            hit = run_cache.get(disk_key)
            if hit is not None:
                runs.append(dict(hit, cached=True))
                if name != "selection":
                    cache[key] = hit
                continue
        torch.manual_seed(seed)
        model = build_architecture(arch, num_classes=n_classes, **input_kwargs(dataset))
        res = train_and_test(model, _IndexSubset(dataset, idx), test_dataset, recipe, seed=seed,
                             desc=f"{arch}/{name}/seed{seed}")
        run = {"architecture": arch, "subset": name, "seed": seed, "n_train": int(idx.size),
               "accuracy": res["accuracy"], "loss": res["loss"], "seconds": res["seconds"]}
        logger.info("%s on %s (%d samples, seed %d): acc %.4f in %.1fs", arch, name, idx.size, seed,
                    res["accuracy"], res["seconds"])
        if name != "selection":
            cache[key] = run
        if run_cache is not None:
            run_cache.put(disk_key, run)
        runs.append(run)
    summary: Dict[str, Dict[str, Any]] = {}
    for arch in archs:
        s: Dict[str, Any] = {"unseen": proxy_arch is None or arch != proxy_arch}
        for name, _ in subsets:
            rs = [r for r in runs if r["architecture"] == arch and r["subset"] == name]
            m, sd = _mean_std([r["accuracy"] for r in rs])
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


def input_kwargs(dataset: Any) -> Dict[str, int]:
    """``in_channels`` and ``side`` of the dataset's images, for :func:`build_architecture`."""
    x = dataset[0][0]
    if hasattr(x, "shape") and len(x.shape) == 3:
        return {"in_channels": int(x.shape[0]), "side": int(x.shape[-1])}
    return {"in_channels": 1, "side": 28}


# =========================================================================== proxy-set search
def make_proxies(methods: Sequence[str], dataset: Any, *, per_class: int = 100, config=None,
                 on_error: str = "skip") -> Tuple[Dict[str, Selection], Dict[str, str]]:
    """Proxy sets of ``per_class`` samples per class made by each registered method (class-balanced).

    Returns ``(proxies, skipped)``; a method that is not registered, or fails with ``on_error="skip"``,
    lands in ``skipped`` with the reason.
    """
    from .methods.registry import MethodConfig, available_methods, select

    labels = _labels(dataset)
    _check_per_class(per_class, labels)
    classes = np.unique(labels)
    keep_ratio = per_class * classes.size / labels.size
    config = config or MethodConfig(num_classes=int(labels.max()) + 1)
    if not config.class_balanced:
        import dataclasses

        config = dataclasses.replace(config, class_balanced=True)
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
class ProxySearchResult(_Result):
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

    def __post_init__(self) -> None:
        from ._optional import require

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
        keys = ("architectures", "full_accuracy", "full_seconds", "proxy_accuracy", "proxy_seconds", "proxy_sizes",
                "dataset_size", "recipe_full", "recipe_proxy", "top_k", "spearman", "spearman_p", "spearman_top",
                "picked", "picked_full_accuracy", "time_ratio")
        d = {"kind": self.kind, **{k: getattr(self, k) for k in keys}}
        d["best_architecture"] = self.best_architecture
        d["best_full_accuracy"] = self.best_full_accuracy
        return d

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

    def plot(self, path: PathLike):
        from .plots import plot_proxy_search

        return plot_proxy_search(self, path)


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
    names = [s.name for s in specs]
    labels = _labels(dataset)
    classes = np.unique(labels)
    n_classes = int(labels.max()) + 1
    if not proxies and not add_random:
        raise PruneDataError("give at least one proxy set")
    idx: Dict[str, np.ndarray] = {}
    for p, sel in proxies.items():
        kept = _kept(sel, dataset, f"proxy {p!r}")
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
    full_acc: List[float] = []
    full_sec = 0.0
    for spec in progress(specs, desc="search on full data", disable=not show_progress):
        if full_accuracy is not None and spec.name in full_accuracy:
            a, s = full_accuracy[spec.name]
        else:
            torch.manual_seed(seed)
            r = train_and_test(spec.build(n_classes, **in_kw), dataset, test_dataset, rec_full, seed=seed,
                               desc=f"full {spec.name}")
            a, s = r["accuracy"], r["seconds"]
        full_acc.append(float(a))
        full_sec += float(s)
    proxy_acc: Dict[str, List[float]] = {}
    proxy_sec: Dict[str, float] = {}
    for p, ix in idx.items():
        sub = _IndexSubset(dataset, ix)
        accs, secs = [], 0.0
        for spec in progress(specs, desc=f"search on proxy {p}", disable=not show_progress):
            torch.manual_seed(seed)
            r = train_and_test(spec.build(n_classes, **in_kw), sub, test_dataset, rec_proxy, seed=seed,
                               desc=f"{p} {spec.name}")
            accs.append(r["accuracy"])
            secs += r["seconds"]
        proxy_acc[p], proxy_sec[p] = accs, secs
        logger.info("proxy %s: searched %d nets in %.1fs", p, len(specs), secs)
    return ProxySearchResult(architectures=names, full_accuracy=full_acc, full_seconds=full_sec,
                             proxy_accuracy=proxy_acc, proxy_seconds=proxy_sec,
                             proxy_sizes={p: int(ix.size) for p, ix in idx.items()}, dataset_size=len(dataset),
                             recipe_full=rec_full.as_dict(), recipe_proxy=rec_proxy.as_dict(), top_k=top_k)


# =========================================================================== training time
@dataclass
class TimeCurveResult(_Result):
    """Test accuracy against training wall time for each training set (Yang et al. 2023, Fig. 4).

    ``curves[name]`` is a list of ``(seconds, epoch, accuracy)`` (seed-averaged); ``final[name]``
    the final accuracy mean/std and ``seconds[name]`` the mean training time; ``time_to_target[name]``
    the first time the curve reaches ``target`` x the reference's (first set's) final accuracy.
    """

    architecture: str
    sizes: Dict[str, int]
    curves: Dict[str, List[Tuple[float, float, float]]]
    final: Dict[str, Dict[str, float]]
    seconds: Dict[str, float]
    recipe: Dict[str, Any]
    seeds: List[int]
    target: float = 0.98
    time_to_target: Dict[str, Optional[float]] = field(default_factory=dict)
    kind = "time_curves"

    def __post_init__(self) -> None:
        ref = next(iter(self.final))
        goal = self.target * self.final[ref]["mean"]
        for name, curve in self.curves.items():
            hit = [t for t, _, a in curve if a >= goal]
            self.time_to_target[name] = float(hit[0]) if hit else None

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "architecture": self.architecture, "sizes": self.sizes, "curves": self.curves,
                "final": self.final, "seconds": self.seconds, "recipe": self.recipe, "seeds": self.seeds,
                "target": self.target, "time_to_target": self.time_to_target}

    def table(self) -> str:
        ref = next(iter(self.final))
        lines = [f"training time, {self.architecture}, {self.recipe['epochs']} epochs, {len(self.seeds)} seeds "
                 f"(reference: {ref})",
                 f"{'training set':<14}{'samples':>8}{'final acc %':>14}{'train s':>9}{'time ratio':>11}"
                 f"{f'to {100 * self.target:.0f}% of ref (s)':>22}"]
        for name in self.final:
            ttt = self.time_to_target[name]
            lines.append(f"{name:<14}{self.sizes[name]:>8}{100 * self.final[name]['mean']:>8.2f}±"
                         f"{100 * self.final[name]['std']:<5.2f}{self.seconds[name]:>9.1f}"
                         f"{self.seconds[name] / self.seconds[ref]:>11.3f}{'never' if ttt is None else f'{ttt:.1f}':>22}")
        return "\n".join(lines)

    def plot(self, path: PathLike):
        from .plots import plot_time_curves

        return plot_time_curves(self, path)


def time_to_accuracy(train_sets: Mapping[str, Any], test_dataset: Any, *, architecture: str = "cnn",
                     epochs: int = 5, seeds: Union[int, Sequence[int]] = 1, batch_size: int = 128, lr: float = 0.05,
                     device: str = "cpu", evals_per_epoch: int = 2, target: float = 0.98,
                     num_classes: Optional[int] = None, show_progress: bool = True) -> TimeCurveResult:
    """Accuracy-versus-wall-time curves; ``train_sets`` maps names (reference first, e.g. ``"full"``)
    to datasets, e.g. ``{"full": train, "adapruner 30%": PrunedDataset(train, sel)}``."""
    if not train_sets:
        raise PruneDataError("give at least one training set")
    check_architectures([architecture])
    seed_list = _seeds(seeds)
    recipe = Recipe(epochs=epochs, batch_size=batch_size, lr=lr, device=device)
    first = next(iter(train_sets.values()))
    n_classes = int(num_classes or int(_labels(first).max()) + 1)
    curves, final, secs, sizes = {}, {}, {}, {}
    for name, data in train_sets.items():
        per_seed = []
        for seed in progress(seed_list, desc=f"time curve {name}", disable=not show_progress):
            torch.manual_seed(seed)
            model = build_architecture(architecture, num_classes=n_classes, **input_kwargs(data))
            per_seed.append(train_and_test(model, data, test_dataset, recipe, seed=seed,
                                           evals_per_epoch=evals_per_epoch, desc=f"{name} seed {seed}"))
        k = min(len(r["curve"]) for r in per_seed)
        curves[name] = [(float(np.mean([r["curve"][i][0] for r in per_seed])), per_seed[0]["curve"][i][1],
                         float(np.mean([r["curve"][i][2] for r in per_seed]))) for i in range(k)]
        m, sd = _mean_std([r["accuracy"] for r in per_seed])
        final[name] = {"mean": m, "std": sd}
        secs[name] = float(np.mean([r["seconds"] for r in per_seed]))
        sizes[name] = len(data)
    return TimeCurveResult(architecture=architecture, sizes=sizes, curves=curves, final=final, seconds=secs,
                           recipe=recipe.as_dict(), seeds=seed_list, target=target)


# =========================================================================== transfer
class _TensorTask(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.targets = x, y

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, i: int):
        return self.x[i], int(self.targets[i])

    def __getitems__(self, items: Sequence[int]):
        idx = torch.as_tensor(list(items), dtype=torch.long)
        return list(zip(self.x[idx].unbind(0), self.targets[idx].tolist()))


def digits_task(*, side: int = 28, test_fraction: float = 0.5, seed: int = 0) -> Tuple[Any, Any]:
    """scikit-learn's bundled 8x8 digits (1797 images, no download), upsampled to ``side`` x ``side``
    and standardised, split into a stratified (train, test) pair of datasets with ``.targets``."""
    from ._optional import require

    load_digits = require("sklearn.datasets", extra="eval", purpose="the digits transfer task").load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target, dtype=torch.long)
    tr, te = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=d.target)
    return _TensorTask(x[tr], y[tr]), _TensorTask(x[te], y[te])


def class_split(dataset: Any, classes: Sequence[int], *, per_class: Optional[int] = None, seed: int = 0,
                within: Optional[np.ndarray] = None) -> Any:
    """The samples of ``classes`` with labels renumbered ``0..len(classes)-1`` (optionally only
    ``per_class`` random ones per class, or only indices in ``within``)."""
    labels = _labels(dataset)
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
    return _IndexSubset(dataset, keep, label_map={c: i for i, c in enumerate(classes)})


def transfer_sets(selection: Selection, dataset: Any, *, source_classes: Optional[Sequence[int]] = None,
                  seed: int = 0) -> Dict[str, Any]:
    """Pre-training sets built from a selection: the selection (restricted to ``source_classes`` when
    given), a class-balanced random subset of the same size of the same pool, and the whole pool."""
    kept = _kept(selection, dataset, f"the selection of method {selection.method!r}")
    labels = _labels(dataset)
    if source_classes is None:
        pool = np.arange(labels.size)
        mk = lambda ix: _IndexSubset(dataset, ix)  # noqa: E731
    else:
        pool = np.flatnonzero(np.isin(labels, list(source_classes)))
        kept = kept[np.isin(labels[kept], list(source_classes))]
        mk = lambda ix: class_split(dataset, source_classes, within=ix)  # noqa: E731
    if kept.size == 0:
        raise PruneDataError("the selection keeps no sample of the source classes")
    rnd = pool[random_subset(labels[pool], kept.size, seed=seed + 555)]
    return {f"{selection.method}": mk(kept), "random": mk(rnd), "full": mk(pool)}


@dataclass
class TransferResult(_Result):
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

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "architecture": self.architecture, "target": self.target, "sizes": self.sizes,
                "accuracy": self.accuracy, "pretrain_accuracy": self.pretrain_accuracy,
                "recipe_pretrain": self.recipe_pretrain, "recipe_finetune": self.recipe_finetune, "seeds": self.seeds}

    def table(self) -> str:
        lines = [f"transfer to {self.target}, {self.architecture}, {len(self.seeds)} seeds",
                 f"{'pre-trained on':<16}{'samples':>8}{'target acc %':>16}{'source acc %':>14}"]
        for name, a in self.accuracy.items():
            src = self.pretrain_accuracy.get(name)
            lines.append(f"{name:<16}{self.sizes.get(name, 0):>8}{100 * a['mean']:>9.2f}±{100 * a['std']:<6.2f}"
                         f"{'-' if src is None else f'{100 * src:.2f}':>14}")
        return "\n".join(lines)

    def plot(self, path: PathLike):
        from .plots import plot_transfer

        return plot_transfer(self, path)


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
    seed_list = _seeds(seeds)
    rec_pre = Recipe(epochs=pretrain_epochs, batch_size=batch_size, lr=lr, device=device)
    rec_ft = Recipe(epochs=finetune_epochs, batch_size=batch_size, lr=finetune_lr, device=device)
    tgt_classes = int(_labels(target_train).max()) + 1
    acc: Dict[str, Dict[str, Any]] = {}
    pre_acc: Dict[str, float] = {}
    sizes = {n: len(d) for n, d in pretrain_sets.items()}
    items = list(pretrain_sets.items()) + ([("scratch", None)] if include_scratch else [])
    for name, src in items:
        vals, src_vals = [], []
        for seed in progress(seed_list, desc=f"transfer {name}", disable=not show_progress):
            torch.manual_seed(seed)
            if src is not None:
                src_classes = int(_labels(src).max()) + 1
                model = build_architecture(architecture, num_classes=src_classes, **input_kwargs(src))
                r = train_and_test(model, src, source_test if source_test is not None else src, rec_pre, seed=seed,
                                   desc=f"pre-train {name}")
                src_vals.append(r["accuracy"])
            else:
                model = build_architecture(architecture, num_classes=tgt_classes,
                                           **input_kwargs(target_train))
            fc = getattr(model, "fc", None)
            if not isinstance(fc, torch.nn.Linear):
                raise PruneDataError(f"architecture {architecture!r} has no linear head .fc to replace for fine-tuning")
            model.fc = torch.nn.Linear(fc.in_features, tgt_classes).to(device)
            r = train_and_test(model, target_train, target_test, rec_ft, seed=seed, desc=f"fine-tune {name}")
            vals.append(r["accuracy"])
        m, sd = _mean_std(vals)
        acc[name] = {"mean": m, "std": sd, "accuracies": vals}
        if src_vals:
            pre_acc[name] = float(np.mean(src_vals))
    return TransferResult(architecture=architecture, sizes=sizes, accuracy=acc, pretrain_accuracy=pre_acc,
                          recipe_pretrain=rec_pre.as_dict(), recipe_finetune=rec_ft.as_dict(), seeds=seed_list,
                          target=target_name)
