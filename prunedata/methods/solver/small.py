"""The small-n path on the Gram matrix: exhaustive enumeration of tiny problems, the n <= d iterated
local search, the n > d relaxation + tabu path, and the certificate."""
from __future__ import annotations

import itertools
import logging
import math
import time
from typing import List, Optional

import numpy as np
import torch

from .bounds import cardinality_lower_bound, small_bound
from .problem import PruningSolution, degeneracy, group_quota
from .tabu import small_search, tabu_chains_for, tabu_path

logger = logging.getLogger(__name__)


#: a Gram matrix with at most this many multiply-adds is computed single-threaded: tiny BLAS calls
#: gain nothing from threads and, on a loaded machine, a second thread waits for a time slice
_TINY_GRAM_FLOPS = 1 << 27


def gram64(S: torch.Tensor) -> tuple:
    """(S as float64 numpy, S S^T as numpy) -- single-threaded for tiny problems (see above)."""
    S64 = S.detach().cpu().to(torch.float64)
    n, d = S64.shape
    nt = torch.get_num_threads()
    tiny = n * n * d <= _TINY_GRAM_FLOPS and nt > 1
    if tiny:
        torch.set_num_threads(1)
    try:
        G = S64 @ S64.T
    finally:
        if tiny:
            torch.set_num_threads(nt)
    return S64.numpy(), G.numpy()


def patience_small(n: int, m: int) -> int:
    """Default number of tabu kicks (all chains together) without a new best on the Gram-matrix path:
    50 per chain (fewer for tiny problems: ``m (n - m) / 10``, at least 2); on all but tiny problems
    the time limit ends the search first."""
    return int(tabu_chains_for(n, m) * min(50, max(2, m * (n - m) // 10)))


def patience_ils(n: int, m: int) -> int:
    """Default number of perturbations without improvement of the iterated local search (n <= d)."""
    return int(min(40, max(8, math.sqrt(m * (n - m)) // 2)))


def small_time_limit(n: int) -> float:
    """Default search time of the Gram-matrix path: 0.1 s at n <= 55, n / 550 s up to 0.8 s at n >= 440."""
    return float(min(0.8, max(0.1, n / 550)))


#: the fast solver enumerates every removal set (and so proves optimality) when there are at most
#: this many: the local search can miss the optimum of tiny problems with n > d by a large factor
EXHAUSTIVE_MAX = 20_000


def _cardinality_exhaustive(A: np.ndarray, G: np.ndarray, m: int, gid: Optional[np.ndarray],
                            quota: Optional[List[int]], t0: float) -> PruningSolution:
    """All ``C(n, m)`` removal sets (respecting group quotas), in chunks, scored on the Gram matrix
    (``||v||^2 = sum_{i,j in W} G_ij``, memory ``chunk * m^2``): the optimum, proven."""
    n = A.shape[0]
    best2, best = math.inf, None
    combos = itertools.combinations(range(n), m)
    while True:
        chunk = np.fromiter(itertools.chain.from_iterable(itertools.islice(combos, 4096)), dtype=np.int64)
        if chunk.size == 0:
            break
        C = chunk.reshape(-1, m)
        if gid is not None:
            counts = np.stack([(gid[C] == k).sum(1) for k in range(len(quota))], 1)
            C = C[np.all(counts == np.asarray(quota)[None, :], axis=1)]
            if C.shape[0] == 0:
                continue
        v2 = G[C[:, :, None], C[:, None, :]].sum((1, 2))
        k = int(v2.argmin())
        if v2[k] < best2:
            best2, best = float(v2[k]), C[k].copy()
    removed = np.sort(best)
    objective = float(np.linalg.norm(A[removed].sum(0)))
    sol = PruningSolution(removed=removed, n=n, problem="cardinality", objective=objective, lower_bound=objective,
                          status="optimal", time=time.perf_counter() - t0, solver="fast",
                          info={"path": "exhaustive", "bound_method": "exhaustive", "sets": math.comb(n, m)})
    logger.info("%r", sol)
    return sol


def cardinality_small(S: torch.Tensor, m: int, g_arr: Optional[np.ndarray], *, time_limit: float, seed: int,
                       patience: Optional[int], certify: bool, bound_iters: int,
                       bound_time: Optional[float] = None, exhaustive_max: int = EXHAUSTIVE_MAX,
                       gram: Optional[tuple] = None) -> PruningSolution:
    t0 = time.perf_counter()
    A, G = gram if gram is not None else gram64(S)
    n = A.shape[0]
    dg = np.diag(G).copy()
    if patience is None:
        patience = patience_small(n, m)
    if g_arr is None:
        gid, groups_idx, quota = None, None, None
    else:
        labs, gidx = np.unique(g_arr, return_inverse=True)
        qd = group_quota(g_arr, m)
        quota = [qd[lab] for lab in labs.tolist()]
        groups_idx = [np.flatnonzero(gidx == k) for k in range(labs.size)]
        gid = gidx
    if math.comb(n, m) <= exhaustive_max:
        return _cardinality_exhaustive(A, G, m, gid, quota, t0)
    # one-at-a-time greedy (exact for the Gram matrix): add the row that least increases ||v||^2
    sel = np.zeros(n, dtype=bool)
    g = np.zeros(n)
    score = dg.copy()
    left = None if gid is None else np.asarray(quota, dtype=np.int64)   # per-group removals still to make
    for _ in range(m):
        j = int(np.argmin(score if left is None else np.where(left[gid] > 0, score, np.inf)))
        sel[j] = True
        if left is not None:
            left[gid[j]] -= 1
        g += G[j]
        score = 2 * g + dg
        score[sel] = np.inf
    obj_greedy = math.sqrt(max(float(g[sel].sum()), 0.0))
    t_greedy = time.perf_counter() - t0
    target2 = 0.0
    if certify:  # the free part of the certificate first: the ILS stops if it reaches it
        target2 = small_bound(G, m, groups_idx, quota, sel.astype(np.float64), 0) ** 2
    rng = np.random.default_rng(seed)
    deadline = t0 + time_limit
    gl = groups_idx if groups_idx is not None else [np.arange(n)]
    ql = quota if quota is not None else [m]
    if A.shape[1] >= n:
        # n <= d: many sets cancel almost exactly; greedy -> swaps -> iterated local search with a
        # patience finds SCIP's optimum in milliseconds (benchmarks/solver.py, d = 1,290)
        best_sel, obj_swap, kicks, _ = small_search(G, m, gid, deadline, patience, rng, sel, target2=target2)
        chains = steps = rel_steps = 0
        w_rel, kern, t_relax = None, None, 0.0
    else:
        best_sel, obj_swap, chains, steps, kicks, rel_steps, w_rel, kern, t_relax = tabu_path(
            G, m, gid, quota, gl, ql, sel, obj_greedy, target2, patience, t0, time_limit, t_greedy, rng)
    removed = np.flatnonzero(best_sel)
    objective = float(np.linalg.norm(A[removed].sum(0)))
    t_search = time.perf_counter() - t0
    lb, degenerate, binfo = 0.0, {}, {}
    if certify:
        # n <= d: the relaxation gets as much time as the search took (at least 1 ms), and enough for
        # about 20 interior-point iterations in case the active-set method cycles; n > d (the search
        # used its whole time limit): a tenth of the search, at least 1 ms or the same 20 iterations
        # up to 0.1 s -- unless bound_time says otherwise
        if bound_time is not None:
            budget = bound_time
        elif A.shape[1] >= n:
            budget = max(1e-3, t_search, 3e-10 * n ** 3)
        else:
            budget = max(1e-3, 0.1 * t_search, min(0.1, 3e-10 * n ** 3))
        lb = small_bound(G, m, groups_idx, quota, best_sel.astype(np.float64), bound_iters,
                          deadline=time.perf_counter() + budget, info=binfo)
        if w_rel is not None:    # the relaxation's point that started the search is a direction too
            lb = max(lb, cardinality_lower_bound(S, m, [torch.from_numpy(A.T @ w_rel)], groups=g_arr, _trusted=True))
        lb = min(objective, max(lb, math.sqrt(target2)))
        degenerate = degeneracy(A.sum(0), dg, lb, objective)
    status = "optimal" if certify and objective - lb <= 1e-9 * max(objective, 1e-300) else "feasible"
    sol = PruningSolution(removed=removed, n=n, problem="cardinality", objective=objective, lower_bound=lb,
                          status=status, time=time.perf_counter() - t0, solver="fast", degenerate=degenerate,
                          info={"greedy_objective": obj_greedy, "swap_objective": obj_swap, "ils_iterations": kicks,
                                "ils_patience": patience, "seconds_greedy": t_greedy,
                                "tabu_chains": chains, "tabu_steps": steps, "tabu_kicks": kicks,
                                "relax_steps": rel_steps, "seconds_relax": t_relax,
                                "kernel_rows": None if kern is None else int(kern[0].size),
                                "seconds_search": t_search, "seconds_bound": time.perf_counter() - t0 - t_search, "path": "gram",
                                "bound_method": binfo.get("bound_method"),
                                "relaxation_value": binfo.get("relaxation_value")})
    logger.info("%r", sol)
    return sol
