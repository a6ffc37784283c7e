"""The small-n path on the Gram matrix: exhaustive enumeration of tiny problems, the n <= d iterated
swap search, for n > d the batched tabu chains (started from the greedy set, roundings of the
relaxation and random sets, on a kernel of rows around the relaxation's fractional ones first), and
the certificate."""
from __future__ import annotations

import itertools
import logging
import math
import time
from typing import List, Optional

import numpy as np
import torch

from .bounds import cardinality_lower_bound, fista_relaxation, small_bound
from .problem import PruningSolution, degeneracy, group_quota

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
                       patience: int, certify: bool, bound_iters: int,
                       bound_time: Optional[float] = None, exhaustive_max: int = EXHAUSTIVE_MAX,
                       gram: Optional[tuple] = None) -> PruningSolution:
    t0 = time.perf_counter()
    A, G = gram if gram is not None else gram64(S)
    n = A.shape[0]
    dg = np.diag(G).copy()
    gid = groups_idx = quota = None
    if g_arr is not None:
        labs, gid = np.unique(g_arr, return_inverse=True)
        qd = group_quota(g_arr, m)
        quota = [qd[lab] for lab in labs.tolist()]
        groups_idx = [np.flatnonzero(gid == k) for k in range(labs.size)]
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
    # the free part of the certificate first: the search stops if it reaches it
    target2 = small_bound(G, m, groups_idx, quota, sel.astype(np.float64), 0) ** 2 if certify else 0.0
    rng = np.random.default_rng(seed)
    deadline = t0 + time_limit
    gl = groups_idx if groups_idx is not None else [np.arange(n)]
    ql = quota if quota is not None else [m]
    if A.shape[1] >= n:
        # n <= d: many sets cancel almost exactly; greedy -> swaps -> iterated local search with a
        # patience finds SCIP's optimum in milliseconds (benchmarks/solver.py, d = 1,290)
        best_sel, obj_swap, kicks = small_search(G, m, gid, deadline, patience, rng, sel, target2=target2)
        chains = steps = rel_steps = 0
        w_rel, kern, t_relax = None, None, 0.0
    else:
        best_sel, obj_swap, chains, steps, kicks, rel_steps, w_rel, kern, t_relax = tabu_path(
            G, m, gid, gl, ql, sel, obj_greedy, target2, patience, t0, time_limit, t_greedy, rng)
    removed = np.flatnonzero(best_sel)
    objective = float(np.linalg.norm(A[removed].sum(0)))
    t_search = time.perf_counter() - t0
    lb, degenerate, binfo = 0.0, {}, {}
    if certify:
        # n <= d: the relaxation gets as much time as the search took (at least 20 ms, so a busy machine's
        # scheduler cannot take the certificate away; it returns as soon as it converges), and enough for
        # about 20 interior-point iterations in case the active-set method cycles; n > d (the search
        # used its whole time limit): a tenth of the search, at least 1 ms or the same 20 iterations
        # up to 0.1 s -- unless bound_time says otherwise
        if bound_time is not None:
            budget = bound_time
        elif A.shape[1] >= n:
            budget = max(0.02, t_search, 3e-10 * n ** 3)
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
                                "ils_patience": patience, "seconds_greedy": t_greedy, "tabu_chains": chains,
                                "tabu_steps": steps, "tabu_kicks": kicks, "relax_steps": rel_steps,
                                "seconds_relax": t_relax, "kernel_rows": None if kern is None else int(kern[0].size),
                                "seconds_search": t_search, "seconds_bound": time.perf_counter() - t0 - t_search,
                                "path": "gram", "bound_method": binfo.get("bound_method"),
                                "relaxation_value": binfo.get("relaxation_value")})
    logger.info("%r", sol)
    return sol


def small_search(G: np.ndarray, m: int, gid: Optional[np.ndarray], deadline: float, patience: int,
                  rng: np.random.Generator, start: np.ndarray, target2: float = 0.0) -> tuple:
    """Small n (full Gram matrix in memory): best-improvement swap search + iterated local search.

    The swap deltas of all (removed i, kept j) pairs are ``(G_ii - 2 g_i) + (G_jj + 2 g_j) - 2 G_ij``
    with ``g = G w``; the block ``2 G[removed, kept]`` is kept up to date by replacing one row and one
    column per swap, so a step costs O(m (n - m)) array work and no gathers. Pairs across groups are
    masked by ``-inf`` in the block. Stops after ``patience`` perturbations without improvement, at the
    deadline, or once ``||v||^2 <= target2`` (the certified lower bound squared: provably optimal).
    """
    n = G.shape[0]
    dg = np.diag(G).copy()
    G2 = 2.0 * G
    if gid is not None:
        G2 = np.where(gid[:, None] == gid[None, :], G2, -np.inf)
    tol = 1e-12

    def local(si, ui, g):
        """Best-improvement swaps until none improves; updates ``si``, ``ui``, ``g`` in place, returns ``||v||^2``."""
        v2 = float(g[si].sum())
        B = G2[si][:, ui]
        while True:
            D = (dg[si] - 2.0 * g[si])[:, None] + (dg[ui] + 2.0 * g[ui])[None, :]
            D -= B
            k = int(D.argmin())
            a, b = divmod(k, ui.size)
            dv = float(D[a, b])
            if not dv < -tol * max(v2, 1e-300):
                return float(g[si].sum())
            i, j = si[a], ui[b]
            si[a], ui[b] = j, i
            g += G[j] - G[i]  # G is symmetric: rows instead of strided columns
            v2 += dv
            B[a, :] = G2[j, ui]
            B[:, b] = G2[si, i]

    si = np.flatnonzero(start)
    ui = np.flatnonzero(~start)
    g = G[si].sum(0)
    v2 = local(si, ui, g)
    swap_obj = math.sqrt(max(v2, 0.0))
    best_si, best_ui, best_g, best2 = si.copy(), ui.copy(), g.copy(), v2
    fails = iters = 0
    nu = ui.size
    kmax = max(2, min(10, int(math.sqrt(min(m, n - m))) + 1))
    while (fails < patience and best2 > target2 * (1 + 1e-9) and best2 > 1e-300
           and time.perf_counter() < deadline):
        si, ui, g = best_si.copy(), best_ui.copy(), best_g.copy()
        k = int(rng.integers(1, kmax + 1))
        outs = rng.integers(0, m, size=k)
        ins = rng.integers(0, nu, size=k)
        for a, b in zip(outs.tolist(), ins.tolist()):
            i = si[a]
            if gid is not None:
                cand = np.flatnonzero(gid[ui] == gid[i])
                if cand.size == 0:
                    continue
                b = int(cand[b % cand.size])
            j = ui[b]
            si[a], ui[b] = j, i
            g += G[j] - G[i]
        v2 = local(si, ui, g)
        iters += 1
        if v2 < best2 * (1 - 1e-12):
            best_si, best_ui, best_g, best2 = si, ui, g, v2
            fails = 0
        else:
            fails += 1
    best_sel = np.zeros(n, dtype=bool)
    best_sel[best_si] = True
    return best_sel, swap_obj, iters


#: the tabu chains of the Gram-matrix path together evaluate about this many swap deltas per step
#: (numpy call overhead dominates below it, memory and cache above it)
TABU_BATCH_ELEMENTS = 200_000
#: at most this many chains
TABU_MAX_CHAINS = 32
#: a chain is kicked after this many steps without improving its best
TABU_STALL = 30
#: probability that a stalled chain is kicked from the overall best set rather than from where it is
TABU_FROM_BEST = 0.5
#: tabu tenure: min(m, n - m) / this (plus a random part as large)
TABU_TENURE_DIV = 8
#: share of the time limit for the relaxation that starts the tabu chains; below RELAX_MIN_PAIRS
#: swap pairs m (n - m) the chains start from random sets instead (measured on the family: at
#: n = 100 the relaxation's quarter of the 0.18 s is better spent searching)
RELAX_SHARE = 0.25
RELAX_MIN_PAIRS = 3000
#: at most this many accelerated projected-gradient steps on the relaxation
RELAX_ITERS = 300
#: the greedy set is improved by plain best-improvement swaps first up to this many pairs m (n - m)
TABU_DESCENT_MAX = 40_000
#: the relaxation-kernel search runs when there are more than this many swap pairs m (n - m), on
#: a kernel of this many rows, for this share of the time limit
KERNEL_MIN_PAIRS = 25_000
KERNEL_SIZE = 200
KERNEL_SHARE = 0.6


def _tabu_chains(G: np.ndarray, m: int, gid: Optional[np.ndarray], starts: np.ndarray, deadline: float,
                 rng: np.random.Generator, *, target2: float = 0.0, patience: int = 1000,
                 stall: int = TABU_STALL, offset: Optional[np.ndarray] = None,
                 const: float = 0.0) -> tuple:
    """Swap tabu search on ``min w^T G w, |w| = m`` (Gram-matrix path), ``K`` chains advanced together.

    Every step each chain takes its best swap (removed ``i`` out, kept ``j`` in; delta
    ``(G_ii - 2 g_i) + (G_jj + 2 g_j) - 2 G_ij`` with ``g = G w``, the block ``2 G[removed, kept]``
    kept up to date in O(n) per swap), even if it worsens the objective, except swaps of rows moved
    in the last ``tenure`` steps (tabu; random tenure around ``min(m, n - m) / TABU_TENURE_DIV``)
    unless the swap beats the chain's best (aspiration). A chain that has not improved its best for
    ``stall`` steps is kicked from where it stands by a few random swaps. The chains share every
    numpy call (a ``(K, m, n - m)`` float32 delta array per step; the chosen swap's delta is then
    recomputed in float64), which is what makes small problems fast: one chain is call-overhead
    bound. Swaps stay within a group when ``gid`` is given (cross-group pairs are ``+inf``).
    ``offset``/``const``: a sub-problem of a larger one whose other rows are fixed, ``||v||^2 =
    w^T G w + 2 w . offset + const``. Stops at ``deadline``, when the best reaches ``target2`` (a
    certified bound: proven optimal) or after ``patience`` kicks without a new overall best.
    ``starts`` is ``(K, n)`` bool. Returns ``(best mask, best ||v||^2, steps, kicks)``.
    """
    K, n = starts.shape
    nu = n - m
    dg = np.diag(G).copy()
    G2 = (2.0 * G).astype(np.float32)
    if gid is not None:
        G2 = np.where(gid[:, None] == gid[None, :], G2, np.float32(-np.inf))
    si = np.stack([np.flatnonzero(s) for s in starts])
    ui = np.stack([np.flatnonzero(~s) for s in starts])
    ar = np.arange(K)
    h = np.zeros(n) if offset is None else offset

    def full2(sel_rows, gc):
        return float(gc[sel_rows].sum() + h[sel_rows].sum()) + const

    g = G[si].sum(1) + h
    v2 = np.take_along_axis(g, si, 1).sum(1) + h[si].sum(1) + const
    B = G2[si[:, :, None], ui[:, None, :]]
    best2, best_si = v2.copy(), si.copy()
    c0 = int(best2.argmin())
    gbest2, gbest_si = float(best2[c0]), si[c0].copy()
    tabu_until = np.zeros((K, n), dtype=np.int64)
    tenure = max(2, min(m, nu) // TABU_TENURE_DIV)
    last_imp = np.zeros(K, dtype=np.int64)
    it = kicks = kicks_since = 0
    kmax = max(3, int(math.sqrt(min(m, nu))) + 2)
    inf32 = np.float32(np.inf)
    while kicks_since < patience and gbest2 > target2 * (1 + 1e-9) and gbest2 > 1e-300:
        if (it & 7) == 0 and time.perf_counter() > deadline:
            break
        gs = np.take_along_axis(g, si, 1)
        gu = np.take_along_axis(g, ui, 1)
        av = (dg[si] - 2.0 * gs).astype(np.float32)
        cv = (dg[ui] + 2.0 * gu).astype(np.float32)
        D = av[:, :, None] + cv[:, None, :]
        D -= B
        flat = D.reshape(K, nu * m)
        k0 = flat.argmin(1)
        a0, b0 = np.divmod(k0, nu)
        i0, j0 = si[ar, a0], ui[ar, b0]
        dv0 = dg[i0] - 2.0 * gs[ar, a0] + dg[j0] + 2.0 * gu[ar, b0] - 2.0 * G[i0, j0]
        asp = (v2 + dv0 < best2 * (1 - 1e-12)) & np.isfinite(flat[ar, k0])
        rtab = np.take_along_axis(tabu_until, si, 1) > it
        ctab = np.take_along_axis(tabu_until, ui, 1) > it
        D[rtab] = inf32
        D.transpose(0, 2, 1)[ctab] = inf32
        k = np.where(asp, k0, flat.argmin(1))
        a, b = np.divmod(k, nu)
        ok = asp | np.isfinite(flat[ar, k])      # a chain with every swap tabu (or cross-group) waits
        i = si[ar, a]
        j = np.where(ok, ui[ar, b], i)
        dv = np.where(ok, dg[i] - 2.0 * gs[ar, a] + dg[j] + 2.0 * gu[ar, b] - 2.0 * G[i, j], 0.0)
        si[ar, a] = j
        ui[ar, b] = np.where(ok, i, ui[ar, b])
        g += G[j] - G[i]
        v2 += dv
        B[ar, a, :] = G2[j[:, None], ui]
        B[ar, :, b] = G2[si, i[:, None]]
        t = tenure + rng.integers(0, tenure + 1, size=K)
        tabu_until[ar, i] = it + t
        tabu_until[ar, j] = it + t
        it += 1
        imp = v2 < best2 * (1 - 1e-12)
        for c in np.flatnonzero(imp):
            v2[c] = full2(si[c], g[c])                # re-sum: no drift in what is kept as best
            if v2[c] < best2[c] * (1 - 1e-12):
                best2[c], last_imp[c] = v2[c], it
                best_si[c] = si[c]
                if v2[c] < gbest2 * (1 - 1e-12):
                    gbest2, gbest_si, kicks_since = float(v2[c]), si[c].copy(), 0
        for c in np.flatnonzero(it - last_imp > stall):
            if rng.random() < TABU_FROM_BEST:
                s_, u_ = gbest_si.copy(), np.setdiff1d(np.arange(n), gbest_si)   # intensify: kick the overall best
            else:
                s_, u_ = si[c].copy(), ui[c].copy()
            for _ in range(int(rng.integers(2, kmax + 1))):
                a_ = int(rng.integers(m))
                if gid is None:
                    b_ = int(rng.integers(nu))
                else:
                    cand = np.flatnonzero(gid[u_] == gid[s_[a_]])
                    if cand.size == 0:
                        continue
                    b_ = int(cand[rng.integers(cand.size)])
                s_[a_], u_[b_] = u_[b_], s_[a_]
            si[c], ui[c] = s_, u_
            g[c] = G[s_].sum(0) + h
            v2[c] = full2(s_, g[c])
            B[c] = G2[np.ix_(s_, u_)]
            tabu_until[c] = 0
            last_imp[c] = it
            kicks += 1
            kicks_since += 1
    out = np.zeros(n, dtype=bool)
    out[gbest_si] = True
    return out, gbest2, it, kicks


def _random_starts(n: int, gl: List[np.ndarray], ql: List[int], k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` random removal masks, each with ``ql[i]`` rows of group ``gl[i]``."""
    out = np.zeros((k, n), dtype=bool)
    for c in range(k):
        for ix, q in zip(gl, ql):
            out[c, rng.choice(ix, q, replace=False)] = True
    return out


def _rounded_starts(w: np.ndarray, gl: List[np.ndarray], ql: List[int], k: int,
                    rng: np.random.Generator) -> np.ndarray:
    """``k`` removal masks rounded from the fractional ``w``: the first takes the largest weights
    (per group), the others sample without replacement with probabilities following ``w``."""
    n = w.size
    out = np.zeros((k, n), dtype=bool)
    wp = np.maximum(w, 1e-12)
    for c in range(k):
        key = wp if c == 0 else np.log(rng.random(n)) / wp       # Efraimidis-Spirakis keys
        for ix, q in zip(gl, ql):
            if q > 0:
                out[c, ix[np.argpartition(-key[ix], q - 1)[:q]]] = True
    return out


def _relaxation_kernel(G: np.ndarray, w: np.ndarray, m: int, size: int) -> Optional[tuple]:
    """(kernel rows, rows fixed as removed) from a relaxation point ``w``: the fractional rows plus
    the integral ones with the smallest reduced cost ``|G w + mu|`` (half on each side), ``size`` in
    all; ``None`` when the relaxation is too fractional for that (n >> d: it is then ~0 anyway)."""
    n = w.size
    frac = (w > 1e-3) & (w < 1 - 1e-3)
    if frac.sum() > size // 2 or size >= n:
        return None
    gw = G @ w
    mu = -float(np.mean(gw[frac])) if frac.any() else -float(np.mean(gw))
    r = np.abs(gw + mu)
    one = np.flatnonzero((w >= 1 - 1e-3))
    zero = np.flatnonzero((w <= 1e-3))
    left = size - int(frac.sum())
    k1 = min(one.size, left // 2)
    k0 = min(zero.size, left - k1)
    pick1 = one[np.argsort(r[one])[:k1]]
    pick0 = zero[np.argsort(r[zero])[:k0]]
    kix = np.sort(np.concatenate([np.flatnonzero(frac), pick1, pick0]))
    fixed1 = np.setdiff1d(one, pick1)
    return (kix, fixed1) if 1 <= m - fixed1.size <= kix.size - 1 else None


def tabu_chains_for(n: int, m: int) -> int:
    """Number of tabu chains on the Gram-matrix path: ``TABU_BATCH_ELEMENTS`` swap deltas per step
    in all, at most ``TABU_MAX_CHAINS``."""
    return int(max(1, min(TABU_MAX_CHAINS, TABU_BATCH_ELEMENTS // max(1, m * (n - m)))))


def tabu_path(G, m, gid, gl, ql, sel, obj_greedy, target2, patience, t0, time_limit, t_greedy, rng):
    """The Gram-matrix search for n > d: relaxation, (kernel) tabu chains; see cardinality_small."""
    n = G.shape[0]
    deadline = t0 + time_limit
    chains = tabu_chains_for(n, m)
    # the continuous relaxation (a share of the time): near-integral where n > d, so its roundings
    # are far better starts than random sets (and it is a direction of the certificate)
    w_rel, rel_steps = None, 0
    if m * (n - m) >= RELAX_MIN_PAIRS:     # small problems: random starts do as well
        w_rel, rel_steps = fista_relaxation(G, gl, ql, t0 + RELAX_SHARE * time_limit, iters=RELAX_ITERS)
    t_relax = time.perf_counter() - t0 - t_greedy
    # greedy -> best-improvement swaps (small problems), then tabu chains from there and from
    # roundings of the relaxation, all sharing each step (see _tabu_chains)
    if m * (n - m) <= TABU_DESCENT_MAX:
        best_sel, obj_swap, _ = small_search(G, m, gid, deadline, 0, rng, sel, target2=target2)
    else:
        best_sel, obj_swap = sel, obj_greedy
    if w_rel is not None:    # half of the other chains from roundings of the relaxation, half from random sets
        rs = _rounded_starts(w_rel, gl, ql, chains, rng)
        if chains > 2:
            rs[chains // 2:] = _random_starts(n, gl, ql, chains - chains // 2, rng)
    else:
        rs = _random_starts(n, gl, ql, chains, rng)
    starts = np.concatenate([best_sel[None], rs[:chains - 1]]) if chains > 1 else rs[:1]
    use_kernel = gid is None and w_rel is not None and m * (n - m) > KERNEL_MIN_PAIRS
    kern = _relaxation_kernel(G, w_rel, m, KERNEL_SIZE) if use_kernel else None
    if kern is not None:
        # rows the relaxation leaves fractional or nearly so (small reduced cost) are searched with
        # many chains; the others stay as the relaxation has them. A share of the time, then all
        # rows again from the kernel's best
        kix, fixed1 = kern
        mk = m - fixed1.size
        Gk = G[np.ix_(kix, kix)]
        off = G[kix][:, fixed1].sum(1)
        const = float(G[np.ix_(fixed1, fixed1)].sum())
        kch = tabu_chains_for(kix.size, mk)
        kst = _rounded_starts(w_rel[kix], [np.arange(kix.size)], [mk], kch, rng)
        ksel, k2, ksteps, kkicks = _tabu_chains(Gk, mk, None, kst, t0 + KERNEL_SHARE * time_limit, rng,
                                                 target2=target2, patience=patience, offset=off, const=const)
        full_k = np.zeros(n, dtype=bool)
        full_k[fixed1] = True
        full_k[kix[ksel]] = True
        starts = np.concatenate([full_k[None], starts[:chains - 1]])
    tabu_sel, tabu2, steps, kicks = _tabu_chains(G, m, gid, starts, deadline, rng, target2=target2,
                                                    patience=patience)
    if tabu2 < obj_swap ** 2:
        best_sel = tabu_sel
    return best_sel, obj_swap, chains, steps, kicks, rel_steps, w_rel, kern, t_relax
