"""Score-based pruning baselines: Random, Herding, Forgetting, EL2N and GraNd.

Each is a registered selection method (``prunedata prune DATASET --method el2n``,
``prunedata.methods.registry.select("el2n", dataset, 0.7, config=...)``) and works in two steps, both
public so that a benchmark can score once and select at several ratios:

1. :func:`score_samples` trains the proxy model the method needs (``config.make_model()``, ``config.epochs``
   epochs of SGD) and returns a :class:`SampleScores` — one value per sample, higher = kept first.
2. :func:`select_by_scores` keeps exactly ``round(keep_ratio * n)`` samples with the highest scores,
   per class when ``class_balanced`` (the same fraction of every class, largest-remainder rounding).

Methods, as in the papers:

* **random** — a uniformly random subset drawn from ``config.seed`` (no model).
* **herding** (Welling 2009) — greedy herding with a linear kernel on the proxy's penultimate
  features: step ``t`` adds the sample that brings the mean of the selected features closest to the
  mean of all features. With ``class_balanced`` herding runs per class (each class towards its own
  mean); otherwise over the whole dataset. Score = herding priority ``1 - rank/n``.
* **forgetting** (Toneva et al. 2019) — number of forgetting events (correct at one presentation,
  wrong at the next) counted on the training-mode predictions of every minibatch during proxy
  training; samples never classified correctly get the highest score (more than any count).
* **el2n** (Paul et al. 2021) — ``|| softmax(f(x)) - onehot(y) ||_2`` averaged over the checkpoints
  after each proxy epoch (early training) and over ``runs`` independently seeded proxies.
* **grand** (Paul et al. 2021) — per-sample gradient norm ``|| grad_w loss(x, y) ||_2``, averaged the
  same way. ``params="last"`` (default) is the closed form for the last Linear layer,
  ``||p - y|| * sqrt(||h||^2 + 1)``; ``params="all"`` computes exact per-sample gradients of every
  parameter (``torch.func.vmap(grad(...))`` on CUDA, one ``autograd.grad`` per sample on a CPU:
  ~900 samples/s for the ``cnn`` model on 2 cores, about 50x slower than the closed form).

EL2N, GraNd and Forgetting keep the *hardest* (highest-scoring) samples and prune the easy ones, as in
the papers; ``keep="easy"`` inverts that (which Sorscher et al. 2022 found better for very small
budgets).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy as np
import torch

from ..ratios import check_keep_ratio
from ..errors import PruneDataError
from ..identity import dataset_fingerprint
from ..selection import Selection
from .registry import MethodConfig, check_options, register_method
from .scoring import (ForgettingTracker, dataset_labels, el2n_scores, grand_scores, herding_order, keep_top_k,
                      features_and_logits, train_proxy)

logger = logging.getLogger(__name__)

__all__ = ["SampleScores", "SCORERS", "score_samples", "select_by_scores"]


@dataclass
class SampleScores:
    """Per-sample scores of one baseline (higher = kept first) and how they were obtained."""

    method: str
    scores: np.ndarray
    score_name: Optional[str]
    labels: Optional[np.ndarray]  #: label of every sample (read from the dataset when None and needed)
    params: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    store_scores: bool = True     #: write the scores into the selection file
    per_class: bool = False       #: scores are only comparable within a class (per-class herding)


SCORERS: Dict[str, Callable[..., SampleScores]] = {}


def _scorer(name: str):
    """Decorator: the scorer of baseline ``name``, also registered as selection method ``name``."""
    def deco(fn):
        SCORERS[name] = fn
        register_method(name)(_method(name))
        return fn
    return deco


def _method(name: str):
    def fn(dataset: Any, keep_ratio: float, *, config: MethodConfig, **options) -> Selection:
        keep_ratio = check_keep_ratio(keep_ratio)
        sc = score_samples(name, dataset, config=config, **options)
        return select_by_scores(sc, dataset, keep_ratio, config=config)
    fn.__name__ = f"{name}_method"
    return fn


def _check_keep(keep: str) -> bool:
    if keep not in ("hard", "easy"):
        raise PruneDataError(f"keep must be 'hard' (keep high scores, the papers' choice) or 'easy', got {keep!r}")
    return keep == "hard"


def _checkpoints(checkpoints: Any, epochs: int) -> List[int]:
    if checkpoints is None:
        return list(range(1, epochs + 1))
    if isinstance(checkpoints, (int, np.integer)):
        checkpoints = [checkpoints]
    try:
        cps = sorted({int(c) for c in checkpoints})
    except (TypeError, ValueError):
        raise PruneDataError(f"checkpoints must be a list of epoch numbers, got {checkpoints!r}") from None
    if not cps or cps[0] < 1 or cps[-1] > epochs:
        raise PruneDataError(f"checkpoints must be epochs between 1 and the proxy's {epochs} epochs (--epochs), "
                             f"got {checkpoints!r}")
    return cps


def _proxy_kw(config: MethodConfig, checkpoint: Any = None, resume: bool = False) -> Dict[str, Any]:
    return dict(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, device=config.device,
                num_workers=config.num_workers, show_progress=config.show_progress,
                checkpoint=checkpoint, resume=bool(resume))


def _run_checkpoint(checkpoint: Any, run: int, runs: int) -> Any:
    """The checkpoint file of proxy run ``run`` (the file itself for a single run)."""
    if checkpoint is None or runs == 1:
        return checkpoint
    p = Path(checkpoint)
    return p.with_name(f"{p.stem}.run{run}{p.suffix}")


# --------------------------------------------------------------------------- scorers
@_scorer("random")
def _score_random(dataset: Any, *, config: MethodConfig) -> SampleScores:
    n = len(dataset)
    labels = dataset_labels(dataset) if config.class_balanced else None
    prio = np.random.default_rng(config.seed).random(n)
    return SampleScores("random", prio, "random_priority", labels, params={"seed": config.seed}, store_scores=False)


@_scorer("herding")
def _score_herding(dataset: Any, *, config: MethodConfig, checkpoint: Any = None, resume: bool = False) -> SampleScores:
    model = config.make_model()
    train_proxy(model, dataset, seed=config.seed, desc="herding proxy", **_proxy_kw(config, checkpoint, resume))
    feats, logits, labels = features_and_logits(model, dataset, device=config.device)
    labels_np = labels.numpy()
    n = feats.shape[0]
    prio = np.zeros(n, dtype=np.float64)
    # with class balance each class herds towards its own mean, else the whole dataset towards its mean
    groups = [np.flatnonzero(labels_np == c) for c in np.unique(labels_np)] if config.class_balanced else [np.arange(n)]
    for idx in groups:
        order = herding_order(feats[idx])
        prio[idx[order]] = 1.0 - np.arange(order.size) / order.size
    acc = float((logits.argmax(1) == labels).float().mean())
    return SampleScores("herding", prio, "herding_priority", labels_np,
                        params={"kernel": "linear", "features": "penultimate",
                                "per_class": bool(config.class_balanced)},
                        metrics={"proxy_train_accuracy": acc}, per_class=bool(config.class_balanced))


@_scorer("forgetting")
def _score_forgetting(dataset: Any, *, config: MethodConfig, keep: str = "hard", checkpoint: Any = None,
                      resume: bool = False) -> SampleScores:
    largest = _check_keep(keep)
    tracker = ForgettingTracker(len(dataset))

    def on_batch(ids, logits, y):
        tracker.update(ids, logits.argmax(1) == y)

    model = config.make_model()
    train_proxy(model, dataset, seed=config.seed, on_batch=on_batch, desc="forgetting proxy",
                state=tracker.state_dict, load_state=tracker.load_state_dict, **_proxy_kw(config, checkpoint, resume))
    s = tracker.scores()
    if config.epochs < 3:
        logger.warning("forgetting with %d proxy epochs: at most %d forgetting event(s) per sample, most "
                       "scores will tie (broken at random); use more epochs", config.epochs, config.epochs // 2)
    return SampleScores(
        "forgetting", s if largest else -s, "forgetting_events" if largest else "neg_forgetting_events",
        dataset_labels(dataset),
        params={"keep": keep, "never_learned_score": float(s[~tracker.learned][0]) if tracker.never_learned else None},
        metrics={"never_learned": tracker.never_learned, "mean_forgetting_events": float(tracker.forgets.mean()),
                 "unforgettable": int((tracker.learned & (tracker.forgets == 0)).sum())},
    )


def _averaged_scores(name: str, dataset: Any, config: MethodConfig, score_fn: Callable[[torch.nn.Module], np.ndarray],
                     *, keep: str, runs: int, checkpoints: Optional[Iterable[int]], checkpoint: Any, resume: bool,
                     **extra_params) -> SampleScores:
    """``score_fn(proxy)`` averaged over the checkpoint epochs of ``runs`` proxies (seeded ``config.seed + 1000 r``)."""
    largest = _check_keep(keep)
    if isinstance(runs, bool) or not isinstance(runs, (int, np.integer)) or runs < 1:
        raise PruneDataError(f"runs (independent proxy trainings to average) must be an integer >= 1, got {runs!r}")
    runs = int(runs)
    cps = _checkpoints(checkpoints, config.epochs)
    seeds = [config.seed + 1000 * r for r in range(runs)]
    total = np.zeros(len(dataset), dtype=np.float64)
    count = 0
    for r, seed in enumerate(seeds):
        acc = {"total": np.zeros(len(dataset), dtype=np.float64), "count": 0}   # this run's part (checkpointed)

        def on_epoch_end(epoch, model):
            if epoch in cps:
                acc["total"] = acc["total"] + score_fn(model)
                acc["count"] += 1
                model.train()

        def load_state(st):
            acc.update(total=np.asarray(st["total"], dtype=np.float64), count=int(st["count"]))

        model = dataclasses.replace(config, seed=seed).make_model()
        train_proxy(model, dataset, seed=seed, on_epoch_end=on_epoch_end, desc=f"{name} proxy {r + 1}/{runs}",
                    state=lambda: dict(acc), load_state=load_state,
                    **_proxy_kw(config, _run_checkpoint(checkpoint, r, runs), resume))
        total += acc["total"]
        count += acc["count"]
    s = total / max(count, 1)
    return SampleScores(name, s if largest else -s, name if largest else f"neg_{name}", dataset_labels(dataset),
                        params={"keep": keep, **extra_params, "runs": runs, "checkpoints": cps, "run_seeds": seeds},
                        metrics={f"mean_{name}": float(s.mean())})


@_scorer("el2n")
def _score_el2n(dataset: Any, *, config: MethodConfig, runs: int = 1, checkpoints: Any = None, keep: str = "hard",
                checkpoint: Any = None, resume: bool = False) -> SampleScores:
    return _averaged_scores("el2n", dataset, config, lambda m: el2n_scores(m, dataset, device=config.device),
                            keep=keep, runs=runs, checkpoints=checkpoints, checkpoint=checkpoint, resume=resume)


@_scorer("grand")
def _score_grand(dataset: Any, *, config: MethodConfig, runs: int = 1, checkpoints: Any = None, keep: str = "hard",
                 params: str = "last", checkpoint: Any = None, resume: bool = False) -> SampleScores:
    if params not in ("last", "all"):
        raise PruneDataError(f"grand params must be 'last' (closed form, last layer) or 'all' (every parameter), got {params!r}")
    return _averaged_scores(
        "grand", dataset, config,
        lambda m: grand_scores(m, dataset, params=params, device=config.device, show_progress=config.show_progress),
        keep=keep, runs=runs, checkpoints=checkpoints, checkpoint=checkpoint, resume=resume, params=params)


# --------------------------------------------------------------------------- public two-step API
def score_samples(method: str, dataset: Any, *, config: Optional[MethodConfig] = None, **options) -> SampleScores:
    """Per-sample scores of baseline ``method`` (higher = kept first); trains the proxy it needs."""
    if method not in SCORERS:
        raise PruneDataError(f"{method!r} is not a score-based baseline; these are: {', '.join(sorted(SCORERS))}")
    if len(dataset) < 2:
        raise PruneDataError(f"cannot prune a dataset of {len(dataset)} sample(s)")
    check_options(method, SCORERS[method], options)
    config = config or MethodConfig()
    t0 = time.perf_counter()
    sc = SCORERS[method](dataset, config=config, **options)
    sc.metrics["score_seconds"] = round(time.perf_counter() - t0, 3)
    return sc


def select_by_scores(scores: SampleScores, dataset: Any, keep_ratio: float, *, config: Optional[MethodConfig] = None,
                     class_balanced: Optional[bool] = None, fingerprint: Optional[str] = None) -> Selection:
    """Keep the ``round(keep_ratio*n)`` highest-scoring samples (per class when class-balanced)."""
    keep_ratio = check_keep_ratio(keep_ratio)
    config = config or MethodConfig()
    balanced = config.class_balanced if class_balanced is None else bool(class_balanced)
    n = len(dataset)
    if scores.scores.size != n:
        raise PruneDataError(f"scores are for {scores.scores.size} samples but the dataset has {n}")
    if scores.per_class and not balanced:
        raise PruneDataError(f"{scores.method} scores were computed per class; select with class_balanced=True "
                             "or re-score with config.class_balanced=False")
    labels = (scores.labels if scores.labels is not None else dataset_labels(dataset)) if balanced else None
    kept = keep_top_k(scores.scores, keep_ratio, labels=labels, class_balanced=balanced, largest=True, seed=config.seed)
    params = {"keep_ratio": keep_ratio, "class_balanced": balanced, **scores.params, "proxy": config.as_params()}
    if scores.method == "random":
        params.pop("proxy")
    metrics = {**scores.metrics, "keep_ratio": kept.size / n}
    return Selection(
        kept=kept, dataset_size=n, method=scores.method, params=params,
        fingerprint=fingerprint if fingerprint is not None else dataset_fingerprint(dataset),
        scores=scores.scores if scores.store_scores else None,
        score_name=scores.score_name if scores.store_scores else None, metrics=metrics,
    )
