"""The generalisation-guaranteed (eps) problem: the largest removal whose summed influence stays within eps."""
from __future__ import annotations

import logging
import math
import time
from typing import List, Optional

import numpy as np
import torch

from ...errors import PruneDataError
from .bounds import cardinality_lower_bound, ipm_relaxation, max_removed_upper_bound, pdas_relaxation, relaxation_directions
from .problem import ArrayLike, PruningSolution, SMALL_N, as_matrix, check_eps, check_m, chunked_sum64, degeneracy
from .search import default_time_limit, solve_cardinality_fast
from .small import EXHAUSTIVE_MAX, gram64

logger = logging.getLogger(__name__)


def _small_max_removed_bound(S: torch.Tensor, gram: tuple, eps: float, removed: np.ndarray, ub: int,
                             deadline: float, dirs: List[torch.Tensor]) -> tuple:
    """Tighten the certified largest eps-feasible size for a small ``S`` with exact relaxations.

    The relaxation's value ``r(k) = min ||S^T w||`` over fractional sets of size ``k`` is convex in
    ``k`` and at most ``eps`` at the found size, so ``{k : r(k) <= eps}`` is an interval; a binary
    search over ``(found, ub]`` solves the relaxation exactly (:func:`pdas_relaxation`, else
    :func:`ipm_relaxation`) and keeps every direction whose sorted projections certify some size
    infeasible (then every larger size is too, see :func:`max_removed_upper_bound`). Returns
    ``(bound, relaxation solves)``."""
    A, G = gram
    n = G.shape[0]
    dg = np.diag(G)
    found = int(removed.size)
    idx = [np.arange(n)]
    lo, hi, solves = found + 1, min(ub, n - 1), 0
    while lo <= hi and time.perf_counter() < deadline:
        k = (lo + hi) // 2
        # warm start: the found set grown greedily to size k
        w0 = np.zeros(n)
        w0[removed] = 1.0
        score = 2 * (G @ w0) + dg
        score[removed] = np.inf
        w0[np.argpartition(score, k - found - 1)[:k - found]] = 1.0
        w, converged = pdas_relaxation(G, idx, [k], w0, deadline)
        solves += 1
        cands = [] if w is None else [w]
        if not converged:                              # the active-set method cycled: interior point
            last = None
            for last in ipm_relaxation(G, idx, [k], deadline):
                pass
            if last is not None:
                cands.append(last)
        certified, below = False, False
        for w in cands:
            gw = G @ w
            nv = math.sqrt(max(float(w @ gw), 0.0))
            feasible = abs(float(w.sum()) - k) <= 1e-9 * k and w.min() >= -1e-12 and w.max() <= 1 + 1e-12
            if feasible and nv <= eps:
                below = True                           # r(k) <= ||S^T w|| <= eps: size k not excluded
            if not nv > 0:
                continue
            u = torch.from_numpy(A.T @ w)
            cut = max_removed_upper_bound(S, eps, [u], _trusted=True)   # sizes above cut are infeasible
            if cut < k:
                dirs.append(u)
                ub = min(ub, cut)
                certified = True
        if certified:
            hi = min(k - 1, ub)
        elif below:
            lo = k + 1
        else:
            break        # nothing is known about r(k): stop rather than guess
    return ub, solves


def solve_generalization_fast(S: ArrayLike, eps: float, *, time_limit: Optional[float] = None, seed: int = 0,
                              max_removed: Optional[int] = None, **card_kw) -> PruningSolution:
    """Remove as many rows as possible with ``||sum S_i|| <= eps`` (at most ``max_removed``, default n-1).

    Binary search on the number removed between 0 and a certified upper bound, each step a
    (non-certified) run of :func:`solve_cardinality_fast` (with at most ``exhaustive_max`` sets of
    all sizes up to that bound: a scan down from it with exhaustive solves, proven optimal). The
    best feasible set is returned with a certified upper bound on the largest feasible size (sorted
    projections ``S u``, :func:`max_removed_upper_bound`). Up to ``gram_max_n`` rows the directions
    come from exact relaxations at a binary search of sizes (:func:`_small_max_removed_bound`; the
    bound is then where the relaxation's optimum crosses eps, given time: at least ~1e-9 n^3 s),
    above from projected gradient at one more than the found size.
    """
    t0 = time.perf_counter()
    S = as_matrix(S)
    n, d = S.shape
    eps = check_eps(eps)
    cap = n - 1 if max_removed is None else check_m(max_removed, n)
    if time_limit is None:
        time_limit = default_time_limit(n, d) * 4
    if time_limit <= 0:
        raise PruneDataError(f"time_limit must be positive seconds, got {time_limit}")
    total = chunked_sum64(S)
    # the Gram matrix of a small S, computed once for every cardinality solve and the bound search
    gram = gram64(S) if n <= card_kw.get("gram_max_n", SMALL_N) else None
    card_kw = {**card_kw, "_gram": gram}
    dirs: List[torch.Tensor] = [total]
    hi = min(cap, max_removed_upper_bound(S, eps, dirs, _trusted=True))
    lo, steps, proven, best = 0, 0, False, None
    if hi >= 1 and sum(math.comb(n, k) for k in range(1, hi + 1)) <= card_kw.get("exhaustive_max", EXHAUSTIVE_MAX):
        # few enough sets to enumerate them all: scan the sizes down from the certified bound; the
        # first feasible size is the optimum -- proven only if every size above it was enumerated
        # (beyond gram_max_n rows the cardinality solver takes the heuristic path: size 1 is then
        # scored exactly here, larger sizes are not proven)
        proven = True
        for k in range(hi, 0, -1):
            if k == 1 and gram is None:
                norms = torch.linalg.vector_norm(S.to(torch.float64), dim=1)
                j = int(torch.argmin(norms))
                sol = PruningSolution(removed=np.array([j], dtype=np.int64), n=n, problem="cardinality",
                                      objective=float(norms[j]), lower_bound=float(norms[j]), status="optimal",
                                      time=0.0, solver="fast", info={"path": "exhaustive"})
            else:
                sol = solve_cardinality_fast(S, k, certify=False, seed=seed + steps, **card_kw)
            steps += 1
            proven = proven and sol.info.get("path") == "exhaustive"
            if sol.objective <= eps:
                best = sol
                break
        hi = 0
    while lo < hi:
        left = t0 + time_limit - time.perf_counter()
        if left <= 0:
            break
        mid = (lo + hi + 1) // 2
        per = left / max(1.0, math.log2(hi - lo + 1))
        sol = solve_cardinality_fast(S, mid, time_limit=max(per, 1e-3), seed=seed + steps, certify=False, **card_kw)
        steps += 1
        if sol.objective <= eps:
            lo, best = mid, sol
        else:
            hi = mid - 1
    removed = best.removed if best is not None else np.zeros(0, dtype=np.int64)
    v = S[torch.as_tensor(removed, dtype=torch.long, device=S.device)].to(torch.float64).sum(0)
    objective = float(v.norm())
    if objective > 0:
        dirs.append(v)
    ub = int(removed.size) if proven else min(cap, max_removed_upper_bound(S, eps, dirs, _trusted=True))
    relax_steps = 0
    if removed.size + 1 <= min(ub, n - 1):
        bdeadline = time.perf_counter() + max(1.0, 0.25 * time_limit)
        if gram is not None:
            # exact relaxations: a few interior-point solves' worth at least (~1 s at n = 1,000, 8 s at 2,000)
            bdeadline = max(bdeadline, time.perf_counter() + 1e-9 * n ** 3)
            ub, relax_steps = _small_max_removed_bound(S, gram, eps, removed, ub, bdeadline, dirs)
        else:
            u_rel, _, _, _ = relaxation_directions(S, removed.size + 1, None, None, iters=40, deadline=bdeadline)
            if u_rel is not None:
                dirs.append(u_rel)
            ub = min(ub, max_removed_upper_bound(S, eps, dirs, _trusted=True))
    lb = cardinality_lower_bound(S, int(removed.size), dirs, _trusted=True) if 1 <= removed.size <= n - 1 else 0.0
    degenerate = degeneracy(total, torch.linalg.vector_norm(S, dim=1).to(torch.float64) ** 2, lb, objective, eps=eps)
    sol = PruningSolution(removed=removed, n=n, problem="generalization", objective=objective, lower_bound=lb,
                          status="optimal" if removed.size >= ub else "feasible", time=time.perf_counter() - t0,
                          solver="fast", eps=eps, max_removed_bound=int(ub), degenerate=degenerate,
                          info={"search_steps": steps, "relaxation_solves": relax_steps})
    logger.info("%r", sol)
    return sol
