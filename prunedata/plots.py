"""Pictures of selections (embedding with kept and pruned samples, kept per class, AdaPruner's mask
weights, accuracy vs kept fraction) and of :mod:`prunedata.evaluate`'s results. matplotlib with the Agg
backend; every function writes one PNG atomically and returns its path.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from ._io import PathLike, atomic_write_bytes
from ._optional import require
from .errors import PruneDataError

logger = logging.getLogger(__name__)

__all__ = ["penultimate_features", "embed_2d", "plot_embedding", "plot_class_counts", "plot_mask_histogram",
           "plot_accuracy_vs_keep_ratio", "plot_evaluation", "plot_proxy_search", "plot_time_curves", "plot_transfer"]


def _plt():
    matplotlib = require("matplotlib", extra="eval", purpose="plots")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: PathLike) -> Path:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    out = atomic_write_bytes(path, buf.getvalue())
    logger.info("wrote %s", out)
    return out


# --------------------------------------------------------------------------- embeddings
@torch.no_grad()
def penultimate_features(model: torch.nn.Module, dataset: Any, *, batch_size: int = 1024,
                         device: str = "cpu") -> np.ndarray:
    """Inputs of the model's head for every sample of ``dataset`` as a numpy array, for the 2-D
    embedding plots (:func:`prunedata.features.collect_features`)."""
    from .features import collect_features

    model.to(device)
    return collect_features(model, dataset, batch_size=batch_size, device=device,
                            show_progress=False).h.flatten(1).float().cpu().numpy()


def embed_2d(features: np.ndarray, *, method: str = "pca", seed: int = 0) -> np.ndarray:
    """2-D coordinates: ``"pca"`` (fast) or ``"tsne"`` (scikit-learn, PCA-initialised, slower)."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] < 3:
        raise PruneDataError("need a 2-D feature array with at least 3 samples to embed")
    PCA = require("sklearn.decomposition", extra="eval", purpose="2-D embeddings").PCA

    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(features)
    if method == "tsne":
        from sklearn.manifold import TSNE

        from threadpoolctl import threadpool_limits

        x = PCA(n_components=min(50, features.shape[1], features.shape[0]), random_state=seed).fit_transform(features)
        perp = float(min(30.0, max(2.0, (features.shape[0] - 1) / 3.0)))
        # one OpenMP thread: on a busy 2-core machine sklearn's Barnes-Hut t-SNE with 2 spinning threads was
        # measured 100x slower (91 s instead of 0.7 s for 120 points)
        with threadpool_limits(limits=1):
            return TSNE(n_components=2, init="pca", perplexity=perp, random_state=seed).fit_transform(x)
    raise PruneDataError(f"unknown embedding method {method!r}; use 'pca' or 'tsne'")


def plot_embedding(path: PathLike, features: np.ndarray, labels: Sequence[int], kept_mask: Sequence[bool], *,
                   method: str = "pca", max_points: int = 3000, seed: int = 0, title: str = "",
                   class_names: Optional[Sequence[str]] = None) -> Path:
    """Scatter of the 2-D embedding: kept samples coloured by class, pruned ones as black crosses.

    Two panels as in AdaPruner's Fig. 3: all samples, and the kept samples alone (same axes).
    """
    plt = _plt()
    labels = np.asarray(labels)
    kept_mask = np.asarray(kept_mask, dtype=bool)
    if not (len(features) == labels.size == kept_mask.size):
        raise PruneDataError(f"features ({len(features)}), labels ({labels.size}) and mask ({kept_mask.size}) "
                             "must have one entry per sample")
    idx = np.arange(labels.size)
    if idx.size > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    xy = embed_2d(np.asarray(features)[idx], method=method, seed=seed)
    lab, kept = labels[idx], kept_mask[idx]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), sharex=True, sharey=True)
    cmap = plt.get_cmap("tab10")
    for ax, show_pruned in zip(axes, (True, False)):
        for c in np.unique(lab):
            m = (lab == c) & kept
            name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            ax.scatter(xy[m, 0], xy[m, 1], s=5, color=cmap(int(c) % 10), alpha=0.6, label=name)
        if show_pruned:
            ax.scatter(xy[~kept, 0], xy[~kept, 1], s=12, marker="x", color="black", linewidths=0.7,
                       alpha=0.8, label=f"pruned ({int((~kept).sum())})")
            ax.set_title(f"all samples, pruned marked x ({method.upper()})")
        else:
            ax.set_title(f"kept samples only ({int(kept.sum())} of {kept.size} shown)")
    axes[0].legend(markerscale=3, fontsize=7, loc="best")
    fig.suptitle(title)
    return _save(fig, path)


def plot_class_counts(path: PathLike, selection, labels: Sequence[int], *,
                      class_names: Optional[Sequence[str]] = None, title: str = "") -> Path:
    """Bar chart of total and kept samples per class, with the kept percentage on each bar."""
    plt = _plt()
    counts = selection.class_counts(labels)
    cs = list(counts)
    total = np.array([counts[c]["total"] for c in cs])
    kept = np.array([counts[c]["kept"] for c in cs])
    names = [class_names[c] if class_names is not None and c < len(class_names) else str(c) for c in cs]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(cs)), 4))
    x = np.arange(len(cs))
    ax.bar(x, total, color="#d0d0d0", label="total")
    ax.bar(x, kept, color="#1f77b4", label="kept")
    for i in range(len(cs)):
        ax.text(x[i], kept[i], f"{100 * kept[i] / max(total[i], 1):.0f}%", ha="center", va="bottom", fontsize=8)
    ax.axhline(total.mean() * selection.keep_ratio, color="k", ls="--", lw=0.8, label="uniform share")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set(ylabel="samples",
           title=title or f"{selection.method}: kept per class ({100 * selection.keep_ratio:.1f}% overall)")
    ax.legend()
    return _save(fig, path)


def plot_mask_histogram(path: PathLike, history_or_selection, *, title: str = "") -> Path:
    """AdaPruner's soft mask weights over epochs: a heat map of the 20-bin histogram on [0, 1] per
    epoch (log colour scale), and the first/last epochs' histograms as lines."""
    plt = _plt()
    hist = history_or_selection
    if hasattr(hist, "extra"):
        hist = hist.extra.get("history")
    if not hist or not all(isinstance(h, dict) and "weight_histogram" in h for h in hist):
        raise PruneDataError("no AdaPruner mask history here: the mask-weight histogram needs a selection made by "
                             "AdaPruner (selection.extra['history'] with 'weight_histogram' per epoch)")
    h = np.array([r["weight_histogram"] for r in hist], dtype=float)
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(12, 4.2))
    im = a0.imshow(np.log10(h.T + 1), origin="lower", aspect="auto", extent=(0.5, h.shape[0] + 0.5, 0, 1),
                   cmap="viridis")
    warm = [i + 1 for i, r in enumerate(hist) if r.get("warmup")]
    if warm:
        a0.axvline(max(warm) + 0.5, color="w", ls="--", lw=1)
        a0.text(max(warm) + 0.5, 0.97, " end of warm-up", color="w", va="top", fontsize=8)
    a0.set(xlabel="epoch", ylabel="mask weight sigmoid(alpha m)", title="samples per weight bin (log10(count+1))")
    fig.colorbar(im, ax=a0)
    centers = (np.arange(h.shape[1]) + 0.5) / h.shape[1]  # of the equal bins on [0, 1]
    for i in sorted({0, h.shape[0] // 2, h.shape[0] - 1}):
        a1.plot(centers, h[i], marker="o", ms=3, label=f"epoch {hist[i].get('epoch', i) + 1}")
    a1.set(yscale="symlog", xlabel="mask weight", ylabel="samples", title="histogram at selected epochs")
    a1.legend()
    fig.suptitle(title or "AdaPruner mask weights over training")
    return _save(fig, path)


def plot_accuracy_vs_keep_ratio(path: PathLike, points: Sequence[Mapping[str, Any]], *, title: str = "",
                                full_accuracy: Optional[float] = None) -> Path:
    """``points``: dicts with ``method``, ``keep_ratio``, ``mean`` and optionally ``std``."""
    plt = _plt()
    if not points:
        raise PruneDataError("no points to plot")
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for m in sorted({p["method"] for p in points}):
        ps = sorted((p for p in points if p["method"] == m), key=lambda p: p["keep_ratio"])
        x = [100 * p["keep_ratio"] for p in ps]
        y = [100 * p["mean"] for p in ps]
        e = [100 * p.get("std", 0.0) for p in ps]
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=m)
    if full_accuracy is not None:
        ax.axhline(100 * full_accuracy, color="k", ls="--", lw=1, label="full data")
    ax.set(xlabel="kept (%)", ylabel="test accuracy (%)", title=title or "accuracy vs kept fraction")
    ax.legend()
    return _save(fig, path)


# --------------------------------------------------------------------------- evaluation results
def plot_evaluation(results, path: PathLike, *, title: str = "") -> Path:
    """Grouped bars per architecture: each selection, random at equal size and full data (mean ± std).
    ``results`` is one :class:`~prunedata.evaluate.EvaluationResult` or a list of them (several methods)."""
    plt = _plt()
    results = results if isinstance(results, (list, tuple)) else [results]
    archs = list(dict.fromkeys(a for r in results for a in r.architectures))
    first = results[0]
    series = [(r.method, r, "selection") for r in results] + [
        (name, first, key) for key, name in (("random", "random (same size)"), ("full", "full data"))
        if key in next(iter(first.summary.values()))]
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(archs) * len(series) / 3), 4.5))
    width = 0.8 / len(series)
    x = np.arange(len(archs))
    lo = 1.0
    for j, (name, r, key) in enumerate(series):
        m = [100 * r.summary[a][key]["mean"] if a in r.summary else np.nan for a in archs]
        s = [100 * r.summary[a][key]["std"] if a in r.summary else 0 for a in archs]
        color = "#999999" if key == "random" else ("#333333" if key == "full" else None)
        ax.bar(x + (j - (len(series) - 1) / 2) * width, m, width, yerr=s, capsize=2, label=name, color=color)
        lo = min(lo, np.nanmin(m) / 100 if np.isfinite(np.nanmin(m)) else lo)
    made_with = {r.proxy_architecture for r in results if r.proxy_architecture}
    ax.set_xticks(x, [a + ("\n(made the selection)" if a in made_with else "\n(unseen)") for a in archs])
    ax.set(ylim=(max(0, 100 * lo - 10), 100), ylabel="test accuracy (%)",
           title=title or f"{first.num_kept} of {first.dataset_size} kept ({100 * first.keep_ratio:.1f}%), "
                          f"{len(first.seeds)} seeds")
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def plot_proxy_search(result, path: PathLike) -> Path:
    """One scatter per proxy: proxy test accuracy vs full-data test accuracy of every net, with rho."""
    plt = _plt()
    proxies = list(result.proxy_accuracy)
    cols = min(3, len(proxies))
    rows = int(np.ceil(len(proxies) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    full = 100 * np.asarray(result.full_accuracy)
    for ax, p in zip(axes.flat, proxies):
        a = 100 * np.asarray(result.proxy_accuracy[p])
        ax.scatter(a, full, s=14)
        best = int(np.argmax(a))
        ax.scatter([a[best]], [full[best]], s=60, facecolors="none", edgecolors="r", label="picked")
        ax.set_title(f"{p}: rho={result.spearman[p]:.2f}, time x{result.time_ratio[p]:.2f}", fontsize=9)
        ax.set(xlabel="accuracy trained on proxy (%)", ylabel="accuracy trained on full data (%)")
    for ax in list(axes.flat)[len(proxies):]:
        ax.axis("off")
    fig.suptitle(f"proxy-set architecture search, {len(result.architectures)} ConvNets")
    fig.tight_layout()
    return _save(fig, path)


def plot_time_curves(result, path: PathLike) -> Path:
    """Test accuracy against training wall time (Yang et al. 2023, Fig. 4)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, curve in result.curves.items():
        if not curve:
            continue
        t = [0.0] + [c[0] for c in curve]
        a = [np.nan] + [100 * c[2] for c in curve]
        ax.plot(t, a, marker="o", ms=3, label=f"{name} ({result.sizes[name]} samples)")
    ax.set(xlabel="training wall time (s)", ylabel="test accuracy (%)",
           title=f"{result.architecture}: accuracy vs training time")
    ax.legend()
    return _save(fig, path)


def plot_transfer(result, path: PathLike) -> Path:
    plt = _plt()
    names = list(result.accuracy)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names)), 4))
    m = [100 * result.accuracy[n]["mean"] for n in names]
    s = [100 * result.accuracy[n]["std"] for n in names]
    ax.bar(range(len(names)), m, yerr=s, capsize=3,
           color=["#999999" if n in ("random", "scratch") else ("#333333" if n == "full" else "#1f77b4") for n in names])
    ax.set_xticks(range(len(names)), [f"{n}\n({result.sizes.get(n, 0)})" for n in names])
    ax.set(ylim=(max(0, min(m) - 10), min(100, max(m) + 5)), ylabel=f"{result.target} test accuracy (%)",
           title=f"transfer: pre-train, fine-tune on {result.target}")
    return _save(fig, path)
