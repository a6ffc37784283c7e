"""Per-sample scores across ranks: each rank scores its shard, the rows are gathered once; influence is
:func:`prunedata.methods.influence.compute_influence` with an all-reduce."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Subset

from ..errors import PruneDataError
from .collectives import DistributedError, all_gather_object, all_reduce, gather_per_sample, gather_rows, get_rank, get_world_size, is_main_process, shard_indices

logger = logging.getLogger(__name__)


def _agree(fn: Callable[[], Any], what: str) -> Any:
    """Run ``fn`` on every rank; if it raises on any rank, raise on every rank (no one waits for it)."""
    out, err = None, None
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - re-raised below after telling the others
        err = e
    status = all_gather_object(None if err is None else f"{type(err).__name__}: {err}", what=f"{what} (status)")
    if err is not None:
        raise err
    bad = [(r, m) for r, m in enumerate(status) if m]
    if bad:
        raise DistributedError(f"{what} failed on rank {bad[0][0]}: {bad[0][1]}")
    return out


def _shard(n: int) -> np.ndarray:
    """This rank's block of ``range(n)`` (:func:`shard_indices`); every rank needs at least one sample."""
    if n < get_world_size():
        raise PruneDataError(f"the dataset has {n} samples, fewer than the {get_world_size()} ranks: every rank needs "
                             "at least one sample; use fewer processes")
    return shard_indices(n)


def distributed_scores(score_fn: Callable[[Any], Any], dataset: Any, *, what: str = "per-sample scores") -> np.ndarray:
    """Per-sample scores of the whole ``dataset``, computed shard by shard across ranks.

    ``score_fn(subset)`` must return one score per sample of the map-style ``subset`` it is given,
    in order; each rank calls it on its contiguous shard (:func:`shard_indices`) and the results are
    all-gathered once. Every rank returns the full float64 array in dataset order. Without a process
    group this is ``score_fn(dataset)``. E.g. EL2N of a trained model::

        scores = distributed_scores(lambda part: el2n_scores(model, part), dataset)
    """
    n = len(dataset)
    idx = _shard(n)
    part = dataset if get_world_size() == 1 else Subset(dataset, idx.tolist())

    def local() -> np.ndarray:
        vals = np.asarray(score_fn(part), dtype=np.float64)
        if vals.shape != (len(idx),):
            raise PruneDataError(f"score_fn returned shape {vals.shape} for a shard of {len(idx)} samples; it must "
                                 "return one score per sample of the dataset it is given, in order")
        return vals

    vals = _agree(local, what)
    return gather_per_sample(idx, vals, n, what=f"gathering {what}")


def distributed_el2n(model: torch.nn.Module, dataset: Any, **kw: Any) -> np.ndarray:
    """EL2N scores (:func:`prunedata.methods.scoring.el2n_scores`) of ``model``, sharded across ranks."""
    from ..methods.scoring import el2n_scores

    return distributed_scores(lambda part: el2n_scores(model, part, **kw), dataset, what="EL2N scores")


def distributed_grand(model: torch.nn.Module, dataset: Any, **kw: Any) -> np.ndarray:
    """GraNd scores (:func:`prunedata.methods.scoring.grand_scores`) of ``model``, sharded across ranks."""
    from ..methods.scoring import grand_scores

    return distributed_scores(lambda part: grand_scores(model, part, **kw), dataset, what="GraNd scores")


def distributed_influence(model: torch.nn.Module, dataset: Any, *, layer: Any = None, damping: float = 5e-4,
                          solver: str = "auto", batch_size: int = 512, device: Any = None,
                          dtype: torch.dtype = torch.float64, out_dtype: torch.dtype = torch.float32,
                          gather: bool = True, show_progress: bool = True):
    """:func:`prunedata.methods.influence.compute_influence` with the work split across ranks.

    Each rank collects the head features of its shard (:func:`shard_indices`) and accumulates its
    part of the Hessian (or of the K-FAC factors); the sums are all-reduced, so every rank solves
    with the Hessian of the whole dataset; each rank then computes its rows of ``S`` (with the
    ``1/n`` of the whole dataset). With ``gather=True`` (default) ``S``, the features and labels are
    all-gathered once and every rank returns the same :class:`InfluenceResult` as one process would
    (rows in dataset order); with ``gather=False`` each rank returns its shard's rows
    (``result.features.indices`` says which). Call on every rank with the same model.
    """
    from ..methods.influence import Features, compute_influence

    n = len(dataset)
    idx = _shard(n)
    res = compute_influence(model, dataset, layer=layer, damping=damping, solver=solver, batch_size=batch_size,
                            device=device, dtype=dtype, out_dtype=out_dtype, show_progress=show_progress and is_main_process(),
                            indices=idx, reduce=lambda t, what: all_reduce(t, what=what), agree=_agree)
    if gather:
        t0 = time.perf_counter()
        dev = res.features.h.device
        res.S = gather_rows(idx, res.S, n, what="gathering the influence rows S").to(dev)
        h = gather_rows(idx, res.features.h, n, what="gathering the head features").to(dev)
        y = gather_rows(idx, res.features.y, n, what="gathering the labels").to(dev)
        res.features = Features(h, y, np.arange(n, dtype=np.int64))
        res.timings["gather"] = time.perf_counter() - t0
    logger.info("distributed influence: rank %d of %d scored %d of %d samples, d=%d, %s Hessian", get_rank(),
                get_world_size(), len(idx), n, res.dim, res.solver_name)
    return res
