"""Influence-based pruning (Yang et al., 2023) as the registered selection method ``"influence"``.

Trains a proxy model with the method config, computes the influence matrix ``S`` of its last linear
layer (:mod:`prunedata.methods.influence`) and solves the paper's selection problem
(:mod:`prunedata.methods.solver`):

* by default the cardinality-guaranteed problem: remove exactly ``n - round(keep_ratio * n)``
  samples with the smallest ``||sum S_i||``;
* with ``eps=``: the generalisation-guaranteed problem, remove as many samples as possible with
  ``||sum S_i|| <= eps``; ``keep_ratio`` is then a floor (at least that fraction is kept).

``class_balanced=True`` in the config removes from every class in proportion to its size (the
fast solver swaps only within a class; the certified bound is for that constrained problem).

The selection's metrics hold the achieved norm, its certified lower bound and gap, the paper's
generalisation-gap estimate (``eps_over_n``, the first-order parameter change), the solver and
timings. Per-sample scores are ``||S_i||`` (the single-sample influence norm).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

import numpy as np
import torch

from ..datasets import labels_of
from ..errors import PruneDataError
from ..identity import dataset_fingerprint
from ..selection import Selection
from ..loop import Recipe
from ..ratios import num_to_keep
from ..training import fit
from .influence import compute_influence
from .registry import MethodConfig, register_method
from .solver import solve_pruning

logger = logging.getLogger(__name__)

#: the weight decay of the training recipe (:class:`prunedata.loop.Recipe`), the default damping of the Hessian
FIT_WEIGHT_DECAY = Recipe().weight_decay


@register_method("influence")
def influence_method(dataset: Any, keep_ratio: float, *, config: MethodConfig, eps: Optional[float] = None,
                     layer: Optional[str] = None, damping: Optional[float] = None, hessian: str = "auto",
                     solver: str = "fast", time_limit: Optional[float] = None, model: Optional[torch.nn.Module] = None,
                     exact_solver: str = "SCIP", checkpoint: Optional[str] = None, resume: bool = False,
                     refit_head: bool = False, effort: float = 1.0) -> Selection:
    """Select with influence pruning.

    ``layer``: name of the head (default: the model's last ``nn.Linear``); ``damping``: Hessian
    damping (default: the weight decay of training, 5e-4); ``hessian``: ``"auto"`` / ``"exact"`` /
    ``"kfac"``; ``solver``: ``"fast"`` / ``"exact"`` / ``"auto"`` for the selection problem;
    ``model``: an already trained model to analyse instead of training a proxy; ``checkpoint`` /
    ``resume``: the proxy's training is checkpointed every epoch and continued (a finished proxy is
    reused as is, e.g. to solve again for another keep ratio or eps). ``refit_head``: refit the
    head to the optimum of its regularised loss on the proxy's frozen features before the Hessian
    (where influence functions are derived; the proxy's own head is left as trained).
    ``effort``: the fast selection solver's search time as a multiple of its default.
    """
    if not isinstance(refit_head, bool):
        raise PruneDataError(f"refit_head must be true or false, got {refit_head!r}")
    n = len(dataset)
    if n < 2:
        raise PruneDataError(f"influence pruning needs at least 2 samples, got {n}")
    t0 = time.perf_counter()
    if model is None:
        model = config.make_model()
        fit(model, dataset, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
            device=config.device, num_workers=config.num_workers, show_progress=config.show_progress,
            desc="influence proxy", checkpoint=checkpoint, resume=resume)
    t_train = time.perf_counter() - t0
    model.to(config.device)
    inf = compute_influence(model, dataset, layer=layer, damping=FIT_WEIGHT_DECAY if damping is None else damping,
                            solver=hessian, device=config.device, num_workers=config.num_workers,
                            show_progress=config.show_progress, refit=bool(refit_head))
    groups = None
    if config.class_balanced:
        if eps is not None:
            raise PruneDataError("class_balanced applies to the keep_ratio (cardinality) problem; drop eps= or "
                                 "class_balanced")
        labels = labels_of(dataset)
        groups = labels if labels is not None else inf.features.y.cpu().numpy()
    m = n - num_to_keep(n, keep_ratio)    # removed exactly, or at most with eps=
    if m < 1:
        raise PruneDataError(f"keep_ratio={keep_ratio} keeps all {n} samples; nothing to remove")
    kw = dict(method=solver, time_limit=time_limit, exact_solver=exact_solver)
    if effort != 1.0:
        kw["effort"] = effort
    # with eps= the keep-ratio floor holds on every path (the exact MIP gets it as a constraint)
    sol = (solve_pruning(inf.S, remove=m, groups=groups, **kw) if eps is None
           else solve_pruning(inf.S, eps=eps, max_removed=m, **kw))
    metrics = sol.metrics()
    if inf.solver_name != "exact":
        metrics["achieved_norm_exact_hessian"], metrics["exact_hessian_check"] = inf.exact_norm(sol.removed)
    metrics.update({
        "keep_ratio": (n - sol.num_removed) / n, "hessian_solver": inf.solver_name, "head": inf.layer_name,
        "head_params": inf.dim, "seconds_train": t_train, "seconds_influence": sum(inf.timings.values()),
        "influence_timings": inf.timings, "seconds_total": time.perf_counter() - t0, "head_refit": inf.info,
    })
    # Selection stores dataset positions; features were collected for all indices in order
    kept = inf.features.indices[sol.kept]
    full_scores = np.zeros(n)
    full_scores[inf.features.indices] = torch.linalg.vector_norm(inf.S.to(torch.float64), dim=1).cpu().numpy()
    params = {"problem": sol.problem, "eps": eps, "keep_ratio": keep_ratio, "layer": inf.layer_name,
              "damping": inf.damping, "hessian": hessian, "solver": solver, "proxy": config.as_params()}
    if refit_head:
        params["refit_head"] = True
    sel = Selection(kept=kept, dataset_size=n, method="influence", params=params,
                    fingerprint=dataset_fingerprint(dataset), scores=full_scores, score_name="influence_norm",
                    metrics=metrics)
    logger.info("influence selection: kept %d of %d, norm %.4g (bound %.4g, %s)", len(kept), n, sol.objective,
                sol.lower_bound, sol.status)
    return sel
