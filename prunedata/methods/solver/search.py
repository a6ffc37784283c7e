"""Large-n search: the signed construction (and the block greedy it is measured against), swap local
search, iterated local search, and :func:`solve_cardinality_fast` (which sends small problems to :mod:`.small`)."""
from __future__ import annotations

import logging
import math
import time
from typing import Optional, Sequence

import numpy as np
import torch

from ...errors import PruneDataError
from .bounds import cardinality_lower_bound, group_index, relaxation_directions
from .problem import ArrayLike, PruningSolution, SMALL_N, as_matrix, check_groups, check_m, chunked_sum64, degeneracy
from .small import EXHAUSTIVE_MAX, cardinality_small, patience_ils, patience_small, small_time_limit

logger = logging.getLogger(__name__)


class _State:
    """Current removal set, ``v = sum_{removed} S_i`` and squared row norms."""

    def __init__(self, S: torch.Tensor):
        self.S = S
        self.sel = torch.zeros(S.shape[0], dtype=torch.bool, device=S.device)     # nothing removed yet
        self.r = torch.linalg.vector_norm(S, dim=1).to(torch.float64) ** 2
        self.v = torch.zeros(S.shape[1], dtype=torch.float64, device=S.device)

    def g(self) -> torch.Tensor:
        return (self.S @ self.v.to(self.S.dtype)).to(torch.float64)

    def norm2(self) -> float:
        return float(self.v @ self.v)

    def refresh(self) -> None:
        self.v = self.S[self.sel].to(torch.float64).sum(0)

    def move(self, rows: torch.Tensor, removed: bool) -> None:
        """Mark ``rows`` removed (or kept again) and update ``v``."""
        self.sel[rows] = removed
        part = self.S[rows].to(torch.float64).sum(0)
        self.v += part if removed else -part


def _greedy(st: _State, gl, ql, rounds: int) -> None:
    """Block greedy: each round adds the rows that most reduce (least increase) ``||v||^2`` alone, up to
    ``ql[k]`` removed rows of each group ``gl[k]``."""
    remaining = [q - int(st.sel[ix].sum()) for ix, q in zip(gl, ql)]
    for t in range(rounds):
        if sum(remaining) <= 0:
            break
        score = 2 * st.g() + st.r
        score[st.sel] = float("inf")
        left = rounds - t
        add_all = []
        for k, ix in enumerate(gl):
            if remaining[k] <= 0:
                continue
            b = max(1, math.ceil(remaining[k] / left))
            add_all.append(ix[torch.topk(score[ix], b, largest=False).indices])
            remaining[k] -= b
        st.move(torch.cat(add_all), True)


def _signed_construct(st: _State, gl, ql, deadline: float, gen: np.random.Generator, *,
                      max_sweeps: int = 8, block: int = 64, lam_scale: float = 0.1,
                      min_changed: float = 0.002) -> tuple:
    """Self-balancing signed greedy, then sweeps of single flips (large n).

    Write ``w_i = p + delta_i`` with ``p = m / n`` (per group: its quota over its size), so
    ``v = S^T w = p * sum_i S_i + sum_i delta_i S_i`` with ``delta_i in {1 - p, -p}``: choosing the
    deltas is vector balancing against the common drift. Rows are visited in random order and each
    takes the value that minimises ``||v||^2 + lam2 * (count error)^2`` given all others (unassigned
    rows count 0) -- the first sweep is the online self-balancing greedy, later sweeps flip rows back
    while that lowers the penalised objective, until fewer than ``min_changed * n`` rows change or
    the deadline. Blocks of ``block`` rows share one ``X v`` product and a ``block x block`` Gram
    matrix, so a sweep costs two passes over ``S``. The count is repaired exactly afterwards.
    Sets ``st.sel``/``st.v``; returns (sweeps, rows changed in the last sweep).
    """
    S = st.S
    n = S.shape[0]
    dev = S.device
    gidx = np.zeros(n, dtype=np.int64)
    for k, ix in enumerate(gl):
        gidx[ix.cpu().numpy()] = k
    p = np.asarray(ql, dtype=np.float64) / np.asarray([ix.numel() for ix in gl], dtype=np.float64)
    prow = p[gidx]
    hi_row, lo_row = 1.0 - prow, -prow
    lam2 = lam_scale * float(np.median(st.r.cpu().numpy()))
    r = torch.zeros(S.shape[1], dtype=torch.float64, device=dev)
    pt = torch.as_tensor(prow, device=dev)
    for s in range(0, n, 8192):
        r += pt[s:s + 8192] @ S[s:s + 8192].to(torch.float64)
    c = np.zeros(len(gl))
    delta = np.zeros(n)
    # the per-block products are tiny: run them single-threaded (on a loaded 2-core machine each
    # 2-thread call otherwise waits for a time slice -- measured 34 s instead of ~1.5 s per sweep)
    nt = torch.get_num_threads()
    if S.device.type == "cpu" and nt > 1:
        torch.set_num_threads(1)
    try:
        sweeps, changed = _signed_sweeps(S, r, c, delta, gidx, hi_row, lo_row, lam2, deadline, gen,
                                         max_sweeps, block, min_changed)
    finally:
        if torch.get_num_threads() != nt:
            torch.set_num_threads(nt)
    st.sel = torch.as_tensor(delta > 0, device=dev)
    st.refresh()
    return sweeps, changed


def _signed_sweeps(S, r, c, delta, gidx, hi_row, lo_row, lam2, deadline, gen, max_sweeps, block, min_changed):
    n = S.shape[0]
    dev = S.device
    sweeps = changed = 0
    while sweeps < max_sweeps and time.perf_counter() < deadline:
        order = gen.permutation(n)
        changed = 0
        for s in range(0, n, block):
            idx = order[s:s + block]
            it = torch.as_tensor(idx, device=dev)
            X = S[it].to(torch.float64)
            P = (X @ r).cpu().numpy()
            GB = (X @ X.T).cpu().numpy()
            old = delta[idx]
            dB = old.copy()
            hi, lo, gk = hi_row[idx], lo_row[idx], gidx[idx]
            for k in range(idx.size):
                dk0 = dB[k]
                xk = GB[k, k]
                pk = P[k] - dk0 * xk                # <v without row k, S_k>
                c0 = c[gk[k]] - dk0
                h, l_ = hi[k], lo[k]
                ch = h * (2 * pk + h * xk + lam2 * (2 * c0 + h))
                cl = l_ * (2 * pk + l_ * xk + lam2 * (2 * c0 + l_))
                dk = h if ch < cl else l_
                if dk != dk0:
                    P += (dk - dk0) * GB[k]
                    c[gk[k]] = c0 + dk
                    dB[k] = dk
            diff = dB - old
            nz = np.flatnonzero(diff)
            if nz.size:
                r += torch.as_tensor(diff[nz], device=dev) @ X[torch.as_tensor(nz, device=dev)]
                delta[idx] = dB
                changed += int(nz.size) if sweeps else 0
            if time.perf_counter() > deadline and sweeps:
                break
        sweeps += 1
        if sweeps > 1 and changed < min_changed * n:
            break
    return sweeps, changed


def _repair_count(st: _State, gl, ql) -> None:
    """Make the removal counts exact (per group): drop the surplus rows whose un-removal raises
    ``||v||^2`` least, then add rows by the block greedy."""
    score = -2 * st.g() + st.r     # change of ||v||^2 when un-removing a row
    drop = []
    for ix, q in zip(gl, ql):
        cur = ix[st.sel[ix]]
        extra = cur.numel() - q
        if extra > 0:
            drop.append(cur[torch.topk(score[cur], extra, largest=False).indices])
    if drop:
        st.move(torch.cat(drop), False)
    if int(st.sel.sum()) < sum(ql):
        _greedy(st, gl, ql, 4)


def _swap_round(st: _State, pool: int, gid: Optional[torch.Tensor], gl, tol: float = 1e-12,
                max_steps: int = 128) -> int:
    """One pool round of best-improvement swaps (removed row out, kept row in); returns #swaps."""
    g = st.g()
    dout = -2 * g + st.r          # change of ||v||^2 when un-removing i
    din = 2 * g + st.r            # change when removing j
    dout[~st.sel] = float("inf")
    din[st.sel] = float("inf")
    # the pool: each group's most promising removed and kept rows (with groups pool // groups, at least 2)
    per = pool if gid is None else max(2, pool // len(gl))
    oc, ic = [], []
    for ix in gl:
        so, si = dout[ix], din[ix]
        ko = min(per, int(torch.isfinite(so).sum()))
        ki = min(per, int(torch.isfinite(si).sum()))
        if ko and ki:
            oc.append(ix[torch.topk(so, ko, largest=False).indices])
            ic.append(ix[torch.topk(si, ki, largest=False).indices])
    if not oc:
        return 0
    out_c, in_c = torch.cat(oc), torch.cat(ic)
    P = torch.cat([out_c, in_c])
    SP = st.S[P].to(torch.float64)
    Gm = SP @ SP.T
    gP = g[P].clone()
    rP = st.r[P]
    ko = out_c.numel()
    selP = torch.zeros(P.numel(), dtype=torch.bool, device=P.device)
    selP[:ko] = True
    same = None if gid is None else gid[P][:, None] == gid[P][None, :]
    swaps = 0
    v2 = v2_start = st.norm2()
    if st.S.dtype != torch.float64:
        tol = max(tol, 1e-6)
    thresh = -tol * max(v2, 1e-300)
    for _ in range(min(P.numel(), max_steps)):
        a = -2 * gP + rP                 # un-remove
        c = 2 * gP + rP                  # remove
        delta = a[:, None] + c[None, :] - 2 * Gm
        mask = selP[:, None] & (~selP)[None, :]
        if same is not None:
            mask = mask & same
        delta = torch.where(mask, delta, torch.full_like(delta, float("inf")))
        flat = int(torch.argmin(delta))
        i, j = divmod(flat, delta.shape[1])
        if not float(delta[i, j]) < thresh:
            break
        selP[i], selP[j] = False, True
        gP += Gm[:, j] - Gm[:, i]
        v2 += float(delta[i, j])
        swaps += 1
    if swaps:
        # apply the net change (a row may have moved twice): the pool's rows whose state changed
        outs, ins = out_c[~selP[:ko]], in_c[selP[ko:]]
        for rows, removed in ((outs, False), (ins, True)):
            if rows.numel():
                st.move(rows, removed)
        # the pool deltas use g = S v in S's precision: keep the round only if the true norm fell
        if st.norm2() > v2_start * (1 - 1e-9):
            for rows, removed in ((outs, True), (ins, False)):
                if rows.numel():
                    st.move(rows, removed)
            return 0
    return swaps


def _local_search(st: _State, pool: int, gid, gl, deadline: float, max_rounds: int = 10_000) -> None:
    """Pool rounds of swaps until a round finds none or the deadline passes."""
    for _ in range(max_rounds):
        if time.perf_counter() > deadline or _swap_round(st, pool, gid, gl) == 0:
            break


def _ils_large(st: _State, best_sel: torch.Tensor, best2: float, pool: int, gid, gl, deadline: float,
               patience: int, gen: torch.Generator) -> tuple:
    """Iterated local search with pool swaps (large n): perturb k rows, local search, keep if better."""
    fails = iters = improved = 0
    while time.perf_counter() < deadline and fails < patience and best2 > 0:
        st.sel = best_sel.clone()
        sel_idx = torch.nonzero(st.sel).flatten().cpu()
        uns_idx = torch.nonzero(~st.sel).flatten().cpu()
        kmax = max(2, min(32, int(math.sqrt(min(sel_idx.numel(), uns_idx.numel()))) + 1))
        k = int(torch.randint(1, kmax + 1, (1,), generator=gen))
        o = sel_idx[torch.randperm(sel_idx.numel(), generator=gen)[:k]]
        if gid is None:
            i_ = uns_idx[torch.randperm(uns_idx.numel(), generator=gen)[:k]]
        else:  # swap within a group to keep the quotas
            gcpu = gid.cpu()
            ins = []
            for j in o.tolist():
                cand = uns_idx[gcpu[uns_idx] == gcpu[j]]
                ins.append(int(cand[int(torch.randint(cand.numel(), (1,), generator=gen))]))
            i_ = torch.as_tensor(ins)
        st.sel[o.to(st.S.device)] = False
        st.sel[i_.to(st.S.device)] = True
        st.refresh()
        _local_search(st, pool, gid, gl, deadline)
        iters += 1
        if st.norm2() < best2 * (1 - 1e-12):
            best_sel, best2 = st.sel.clone(), st.norm2()
            fails, improved = 0, improved + 1
        else:
            fails += 1
    return best_sel, iters, improved


def default_time_limit(n: int, d: int) -> float:
    # about 20 matrix-vector products' worth of iterated local search beyond greedy + swaps
    return float(min(30.0, max(0.5, 4e-9 * n * d * 20)))


def solve_cardinality_fast(S: ArrayLike, m: int, *, groups: Optional[Sequence[int]] = None,
                           time_limit: Optional[float] = None, seed: int = 0, pool: int = 256,
                           greedy_rounds: int = 48, ils_patience: int = 30, bound_iters: int = 60,
                           bound_time: Optional[float] = None, certify: bool = True,
                           small_patience: Optional[int] = None, gram_max_n: int = SMALL_N,
                           construct: str = "signed", construct_frac: float = 0.4,
                           exhaustive_max: int = EXHAUSTIVE_MAX, effort: float = 1.0,
                           _gram: Optional[tuple] = None) -> PruningSolution:
    """Remove exactly ``m`` rows minimising ``||sum S_i||`` (per-group quotas when ``groups`` is given).

    With at most ``exhaustive_max`` possible removal sets every one is scored (proven optimal). Up to
    ``gram_max_n`` rows the search runs on the full Gram matrix (:func:`.small.cardinality_small`):
    with n <= d best-improvement swaps and iterated local search, stopping after ``small_patience``
    perturbations without improvement (default :func:`patience_ils`); with n > d the relaxation,
    kernel and tabu chains of :func:`tabu_path` for the whole time limit (default
    :func:`small_time_limit`; ``small_patience`` then counts kicks without a new best, default
    :func:`patience_small`), so that result can depend on the machine's load. The certificate there
    solves the relaxation exactly (active set, else interior point) in a budget that follows the
    search time unless ``bound_time`` is given.

    Beyond ``gram_max_n`` rows: the self-balancing signed construction (:func:`_signed_construct`, at
    most ``construct_frac`` of the time) -> swap local search on pools of ``pool`` candidates ->
    iterated local search until ``time_limit`` seconds (default scales with n*d, at most 30 s) or
    ``ils_patience`` perturbations without improvement; then a lower bound from the relaxation (at
    most ``bound_iters`` gradient steps or ``bound_time`` seconds). ``certify=False`` skips the bound
    (reported as 0). ``effort`` multiplies the default time limit and patience (``effort=20`` reached
    SCIP's proven optimum on the n > d family of benchmarks/solver.py).

    ``construct="greedy"`` (``greedy_rounds`` blocks) swaps the construction for the older block
    greedy: the baseline the signed construction is measured against (tests, benchmarks/solver.py).
    """
    t0 = time.perf_counter()
    S = as_matrix(S)
    n, d = S.shape
    m = check_m(m, n)
    g_arr = check_groups(groups, n)
    gi, quota = group_index(g_arr, m, S.device)
    gid = None if g_arr is None else torch.as_tensor(np.unique(g_arr, return_inverse=True)[1], device=S.device)
    if isinstance(effort, bool) or not isinstance(effort, (int, float)) or not (math.isfinite(effort) and effort > 0):
        raise PruneDataError(f"effort must be a positive number (1 = default search time; 10 = ten times as long), "
                             f"got {effort!r}")
    tabu = n <= gram_max_n and n > d          # the Gram-matrix path's tabu search (see above)
    if time_limit is None:
        time_limit = effort * (small_time_limit(n) if tabu else default_time_limit(n, d))
    if time_limit <= 0:
        raise PruneDataError(f"time_limit must be positive seconds, got {time_limit}")
    if small_patience is None and n <= gram_max_n:
        small_patience = int(math.ceil(effort * (patience_small(n, m) if tabu else patience_ils(n, m))))
    deadline = t0 + time_limit
    if n <= gram_max_n:
        return cardinality_small(S, m, g_arr, time_limit=time_limit, seed=seed, patience=small_patience,
                                  certify=certify, bound_iters=max(bound_iters, 400), bound_time=bound_time,
                                  exhaustive_max=exhaustive_max, gram=_gram)

    st = _State(S)
    gl, ql = (gi, quota) if gi is not None else ([torch.arange(n, device=S.device)], [m])
    sweeps = 0
    if construct == "signed":
        sweeps, _ = _signed_construct(st, gl, ql, t0 + construct_frac * time_limit, np.random.default_rng(seed))
        _repair_count(st, gl, ql)
    elif construct == "greedy":
        _greedy(st, gl, ql, min(greedy_rounds, m))
    else:
        raise PruneDataError(f"construct must be 'signed' or 'greedy', got {construct!r}")
    t_greedy = time.perf_counter() - t0
    obj_greedy = math.sqrt(st.norm2())
    _local_search(st, pool, gid, gl, deadline)
    t_swap = time.perf_counter() - t0 - t_greedy
    best_sel, best2 = st.sel.clone(), st.norm2()
    obj_swap = math.sqrt(best2)
    best_sel, ils_iters, improved = _ils_large(st, best_sel, best2, pool, gid, gl, deadline, ils_patience,
                                               torch.Generator(device="cpu").manual_seed(seed))
    st.sel = best_sel
    st.refresh()
    objective = float(st.v.norm())
    t_search = time.perf_counter() - t0
    tb = time.perf_counter()          # the certificate
    lb, rel_iters, degenerate, relax_value = 0.0, 0, {}, None
    if certify:
        total = chunked_sum64(S)
        dirs = [st.v, total]
        bdeadline = tb + (bound_time if bound_time is not None else max(2.0, 0.5 * time_limit))
        # start the relaxation at the found set: its value then says at once how far below the
        # objective the relaxed optimum lies (no bound of this kind can exceed it)
        u_rel, b_rel, rel_iters, w_rel = relaxation_directions(S, m, gi, quota, iters=bound_iters, deadline=bdeadline,
                                                                x0=best_sel.to(S.dtype))
        if u_rel is not None:
            dirs.append(u_rel)
        relax_value = float((S.T @ w_rel.to(S.dtype)).norm())
        lb = cardinality_lower_bound(S, m, dirs, groups=g_arr, _trusted=True)
        degenerate = degeneracy(total, st.r, lb, objective)
    t_bound = time.perf_counter() - tb
    removed = torch.nonzero(best_sel).flatten().cpu().numpy()
    status = "optimal" if objective - lb <= 1e-9 * max(objective, 1e-300) else "feasible"
    sol = PruningSolution(removed=removed, n=n, problem="cardinality", objective=objective, lower_bound=lb,
                          status=status, time=time.perf_counter() - t0, solver="fast", degenerate=degenerate,
                          info={"greedy_objective": obj_greedy, "swap_objective": obj_swap, "ils_iterations": ils_iters,
                                "ils_improvements": improved, "construct": construct, "construct_sweeps": sweeps,
                                "seconds_greedy": t_greedy, "seconds_swap": t_swap, "seconds_search": t_search,
                                "seconds_bound": t_bound, "relaxation_iterations": rel_iters,
                                "relaxation_value": relax_value,
                                "bound_method": "projected gradient" if certify else None,
                                "group_quota": None if quota is None else dict(zip(np.unique(g_arr).tolist(), quota))})
    logger.info("%r", sol)
    return sol
