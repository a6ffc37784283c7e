"""Shared pieces of the score-based baselines: proxy training, penultimate features, per-sample
scores (EL2N, GraNd), forgetting-event counting, greedy herding and "keep the top k" selection, on
map-style classification datasets yielding ``(x, y)`` and models whose head is found by
:func:`prunedata.features.find_linear_layer`.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..errors import PruneDataError
from ..features import collect_features, find_linear_layer
from ..labels import read_labels
from ..ratios import num_to_keep
from ..progress import progress

logger = logging.getLogger(__name__)

__all__ = [
    "dataset_labels", "apportion", "keep_top_k", "train_proxy", "features_and_logits",
    "el2n_scores", "grand_scores", "ForgettingTracker", "herding_order",
]


# --------------------------------------------------------------------------- small helpers
#: the labels of every sample (:func:`prunedata.labels.read_labels`; the name the baselines used)
dataset_labels = read_labels


def apportion(counts: Sequence[int], k: int) -> np.ndarray:
    """Split ``k`` over groups of sizes ``counts`` proportionally (largest remainder).

    Every group gets ``floor`` or ``ceil`` of ``k * n_c / n``, never more than it has, and the parts
    add up to exactly ``k``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if not 0 <= k <= n:
        raise PruneDataError(f"cannot keep {k} of {n} samples")
    if n == 0:
        return np.zeros_like(counts)
    exact = counts * (k / n)
    base = np.minimum(np.floor(exact).astype(np.int64), counts)
    rest = k - int(base.sum())
    if rest > 0:
        frac = exact - base
        frac[base >= counts] = -1.0
        order = np.argsort(-frac, kind="stable")
        base[order[:rest]] += 1
    return base


def keep_top_k(scores: np.ndarray, keep_ratio: float, *, labels: Optional[np.ndarray] = None,
               class_balanced: bool = False, largest: bool = True, seed: int = 0) -> np.ndarray:
    """Indices (sorted) of the ``round(keep_ratio*n)`` samples with the highest (``largest``) scores.

    With ``class_balanced=True`` every class keeps the same fraction (largest-remainder rounding so
    the total is still exact) and ranking happens within each class. Ties are broken by a random
    permutation drawn from ``seed``, so equal scores (e.g. forgetting counts) do not favour low indices.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = scores.size
    if not np.all(np.isfinite(scores)):
        raise PruneDataError(f"{int((~np.isfinite(scores)).sum())} scores are NaN or infinite; cannot rank them")
    k = num_to_keep(n, keep_ratio)
    tiebreak = np.random.default_rng(seed).permutation(n)
    key = -scores if largest else scores
    order = np.lexsort((tiebreak, key))  # primary: key ascending (best first), secondary: random
    if not class_balanced:
        return np.sort(order[:k])
    if labels is None:
        raise PruneDataError("class_balanced=True needs the label of every sample (dataset.targets)")
    labels = np.asarray(labels).reshape(-1)
    if labels.size != n:
        raise PruneDataError(f"got {labels.size} labels for {n} scores")
    classes, counts = np.unique(labels, return_counts=True)
    quota = apportion(counts, k)
    ranked_labels = labels[order]
    kept = [order[ranked_labels == c][:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------- proxy training
def train_proxy(model: nn.Module, dataset: Any, *, epochs: int, batch_size: int = 128, lr: float = 0.05,
                seed: int = 0, device: Any = "cpu", num_workers: int = 0, show_progress: bool = True,
                on_batch: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]] = None,
                on_epoch_end: Optional[Callable[[int, nn.Module], None]] = None, desc: str = "proxy",
                checkpoint: Optional[Any] = None, resume: bool = False,
                state: Optional[Callable[[], Any]] = None, load_state: Optional[Callable[[Any], None]] = None,
                stop_after_epoch: Optional[int] = None) -> nn.Module:
    """Train ``model`` with the default :class:`~prunedata.loop.Recipe` (SGD, momentum 0.9, wd 5e-4,
    cosine schedule) through :func:`prunedata.loop.train`, as :func:`prunedata.training.fit` does.

    Sample ids come with each batch (:class:`~prunedata.identity.IndexedDataset`):
    ``on_batch(ids, logits, targets)`` sees the training-mode logits of every step (detached) and
    ``on_epoch_end(epoch, model)`` runs after each epoch (1-based).

    With ``checkpoint`` the model, optimiser, schedule, shuffling generator, RNG state and the
    caller's own state (``state()``, e.g. a scorer's accumulators) are written atomically after
    every epoch; ``resume=True`` continues from there (``load_state`` gets the caller's state back)
    and ends where an uninterrupted run would. A checkpoint of another recipe is refused.
    ``stop_after_epoch=k`` ends the run after its epoch ``k``, checkpoint written, to be continued later
    with ``resume=True``.
    """
    from ..checkpoint import model_signature
    from ..loop import Callbacks, Recipe, train

    if epochs < 1:
        raise PruneDataError(f"proxy training needs epochs >= 1, got {epochs}")
    recipe = Recipe(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=str(device))
    key = {"job": desc, "epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr), "seed": int(seed),
           "samples": len(dataset), **model_signature(model)}
    hook = Callbacks(on_batch=on_batch, on_epoch_end=on_epoch_end, state=state, load_state=load_state)
    train(model, dataset, recipe, hooks=[hook], with_ids=True, num_workers=num_workers, checkpoint=checkpoint,
          resume=resume, checkpoint_recipe=key, what="proxy", stop_on_nan=True, stop_after_epoch=stop_after_epoch,
          show_progress=show_progress, desc=desc, log=logger)
    return model


# --------------------------------------------------------------------------- features and scores
def features_and_logits(model: nn.Module, dataset: Any, *, batch_size: int = 1024, device: Any = "cpu",
                        num_workers: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features, logits, labels)`` for every sample, in dataset order, in eval mode, on the CPU
    (:func:`prunedata.features.collect_features`; ``features`` is the input of the head)."""
    model.to(device)
    f = collect_features(model, dataset, batch_size=batch_size, device=device, num_workers=num_workers,
                         show_progress=False, logits=True)
    return f.h.float().cpu(), f.logits.float().cpu(), f.y.cpu()


def el2n_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """EL2N (Paul et al. 2021): ``|| softmax(logits) - onehot(y) ||_2`` per sample."""
    p = torch.softmax(logits.double(), dim=1)
    return (p - F.one_hot(labels, p.shape[1]).double()).norm(dim=1)


def el2n_scores(model: nn.Module, dataset: Any, *, batch_size: int = 1024, device: Any = "cpu") -> np.ndarray:
    _, logits, labels = features_and_logits(model, dataset, batch_size=batch_size, device=device)
    return el2n_from_logits(logits, labels).numpy()


def grand_last_layer(features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                     bias: bool = True) -> torch.Tensor:
    """Closed-form per-sample norm of the cross-entropy gradient w.r.t. the last Linear layer.

    ``dL/dW = (p - y) h^T`` and ``dL/db = p - y``, so ``||g|| = ||p - y|| * sqrt(||h||^2 + 1)``.
    """
    h2 = features.double().pow(2).sum(1)
    return el2n_from_logits(logits, labels) * torch.sqrt(h2 + (1.0 if bias else 0.0))


def grand_all_params(model: nn.Module, dataset: Any, *, batch_size: int = 256, device: Any = "cpu",
                     impl: str = "auto", chunk_size: int = 64, show_progress: bool = False) -> np.ndarray:
    """Exact per-sample gradient norm over *all* parameters, eval mode.

    ``impl="vmap"`` uses ``torch.func.vmap(grad(...))`` (fast on a GPU); ``impl="loop"`` one
    ``autograd.grad`` per sample (on a CPU it is faster than vmap for conv nets: ~900 samples/s vs ~60
    for the ``cnn`` model on 2 cores). ``"auto"`` picks vmap on CUDA, the loop elsewhere.
    """
    model.eval().to(device)
    if impl == "auto":
        impl = "vmap" if torch.device(device).type == "cuda" else "loop"
    if impl not in ("loop", "vmap"):
        raise PruneDataError(f"impl must be 'auto', 'loop' or 'vmap', got {impl!r}")
    names = [k for k, v in model.named_parameters() if v.requires_grad]
    params = [v for v in model.parameters() if v.requires_grad]
    norms = []
    loader = DataLoader(dataset, batch_size=batch_size)
    bar = progress(loader, desc=f"grand (all params, {impl})", disable=not show_progress)
    if impl == "loop":
        for x, y in bar:
            x, y = x.to(device), torch.as_tensor(y).to(device)
            for i in range(x.shape[0]):
                loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
                g = torch.autograd.grad(loss, params)
                norms.append(torch.sqrt(sum(t.double().pow(2).sum() for t in g)).reshape(1).cpu())
        return torch.cat(norms).numpy()

    from torch.func import functional_call, grad, vmap

    pdict = {k: v.detach() for k, v in zip(names, params)}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_one(p, x, y):
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(out, y.unsqueeze(0))

    per_grad = vmap(grad(loss_one), in_dims=(None, 0, 0), chunk_size=chunk_size)
    for x, y in bar:
        x, y = x.to(device), torch.as_tensor(y).to(device)
        g = per_grad(pdict, x, y)
        sq = sum(t.flatten(1).double().pow(2).sum(1) for t in g.values())
        norms.append(torch.sqrt(sq).cpu())
    return torch.cat(norms).numpy()


def grand_scores(model: nn.Module, dataset: Any, *, params: str = "last", batch_size: int = 1024,
                 device: Any = "cpu", show_progress: bool = False) -> np.ndarray:
    """GraNd (Paul et al. 2021): ``|| grad_w loss(x, y) ||_2`` per sample, at the current weights.

    ``params="last"`` uses the closed form for the last Linear layer; ``params="all"`` computes
    exact per-sample gradients of every parameter with ``torch.func`` (slower).
    """
    if params == "last":
        fc = find_linear_layer(model)[1]
        h, logits, labels = features_and_logits(model, dataset, batch_size=batch_size, device=device)
        return grand_last_layer(h, logits, labels, bias=fc.bias is not None).numpy()
    if params == "all":
        return grand_all_params(model, dataset, batch_size=min(batch_size, 256), device=device,
                                show_progress=show_progress)
    raise PruneDataError(f"grand params must be 'last' (closed form, last layer) or 'all' (every parameter), got {params!r}")


# --------------------------------------------------------------------------- forgetting
class ForgettingTracker:
    """Counts forgetting events (Toneva et al. 2019) per sample id.

    Call :meth:`update` with the ids of a batch and whether each was classified correctly when it
    was presented. A forgetting event is a presentation where the sample is misclassified after
    having been classified correctly at its previous presentation. :meth:`scores` gives the counts,
    with samples never classified correctly set to ``never_learned_score`` (default: the number of
    presentations seen, which exceeds any possible count), as in the paper, where they rank as the
    most forgettable.
    """

    def __init__(self, num_samples: int):
        self.num_samples = int(num_samples)
        self.forgets = np.zeros(self.num_samples, dtype=np.int64)
        self.prev_correct = np.zeros(self.num_samples, dtype=bool)
        self.learned = np.zeros(self.num_samples, dtype=bool)
        self.presentations = np.zeros(self.num_samples, dtype=np.int64)

    def update(self, ids: Any, correct: Any) -> None:
        ids = np.asarray(ids.cpu() if hasattr(ids, "cpu") else ids, dtype=np.int64).reshape(-1)
        correct = np.asarray(correct.cpu() if hasattr(correct, "cpu") else correct, dtype=bool).reshape(-1)
        if ids.size != correct.size:
            raise PruneDataError(f"{ids.size} ids but {correct.size} correctness flags")
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_samples):
            raise PruneDataError(f"sample ids must lie in [0, {self.num_samples})")
        if np.unique(ids).size != ids.size:
            raise PruneDataError("a batch lists the same sample id twice; forgetting needs one outcome per id")
        self.forgets[ids] += (self.prev_correct[ids] & ~correct).astype(np.int64)
        self.prev_correct[ids] = correct
        self.learned[ids] |= correct
        self.presentations[ids] += 1

    def scores(self, never_learned_score: Optional[float] = None) -> np.ndarray:
        s = self.forgets.astype(np.float64)
        if never_learned_score is None:
            # more than any sample can have been forgotten in this many presentations
            never_learned_score = max(float(self.presentations.max(initial=0)), float(s.max(initial=0.0)) + 1.0)
        s[~self.learned] = float(never_learned_score)
        return s

    _STATE = ("forgets", "prev_correct", "learned", "presentations")

    def state_dict(self) -> Dict[str, np.ndarray]:
        return {k: getattr(self, k).copy() for k in self._STATE}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for k in self._STATE:
            v = np.asarray(state[k])
            if v.shape != (self.num_samples,):
                raise PruneDataError(f"forgetting state for {v.size} samples, expected {self.num_samples}")
            setattr(self, k, v.astype(getattr(self, k).dtype, copy=True))

    @property
    def never_learned(self) -> int:
        return int((~self.learned).sum())


# --------------------------------------------------------------------------- herding
def herding_order(features: torch.Tensor, k: Optional[int] = None) -> np.ndarray:
    """Greedy kernel herding (Welling 2009; linear kernel on ``features``, as in iCaRL/DeepCore).

    Step ``t`` picks the unselected sample that brings the mean of the ``t`` selected features closest
    to the mean of all features. Returns the first ``k`` (default all) indices in selection order.
    """
    x = features.double()
    n = x.shape[0]
    k = n if k is None else int(min(k, n))
    mu = x.mean(0)
    base = x.pow(2).sum(1)  # ||x_i||^2, set to +inf once i is selected
    total = torch.zeros_like(mu)
    order = np.empty(k, dtype=np.int64)
    for t in range(1, k + 1):
        # argmin_i || t*mu - total - x_i ||^2 = argmin_i ||x_i||^2 - 2 x_i . (t*mu - total)
        d = torch.addmv(base, x, t * mu - total, alpha=-2.0)
        i = int(torch.argmin(d))
        order[t - 1] = i
        base[i] = math.inf
        total += x[i]
    return order
