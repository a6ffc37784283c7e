"""The selection problems of influence pruning (Yang et al., 2023, Eq. 3 and 4) and their solvers.

Given the influence matrix ``S`` (n, d) -- row ``S_i`` is the parameter change from removing sample
``i`` -- choose the set ``W`` of samples to REMOVE:

* cardinality-guaranteed: remove exactly ``m`` samples minimising ``||sum_{i in W} S_i||_2``;
* generalisation-guaranteed: remove as many samples as possible with ``||sum_{i in W} S_i||_2 <= eps``.

Two paths behind :func:`solve_pruning`:

* ``method="exact"``: the mixed-integer program through cvxpy (SCIP by default, or another installed
  mixed-integer SOCP solver) with a time limit, on ``||R w||`` where ``S^T = Q R`` (same objective,
  at most ``min(n, d)`` rows). Practical for n up to a few hundred; use it as an oracle.
* ``method="fast"``: with at most ``EXHAUSTIVE_MAX`` candidate sets, all of them (proven optimal);
  up to ``SMALL_N`` rows, on the full Gram matrix ``S S^T`` (numpy, tiny ones
  single-threaded): one-at-a-time greedy, best-improvement swap search with the swap-delta block
  updated in O(n) per swap, then -- with n <= d -- iterated local search (patience ~ sqrt(m (n - m)) / 2,
  8..40 perturbations without improvement); with n > d (the usual shape: many samples, a small
  head) the continuous relaxation (FISTA), a kernel search around its fractional rows and swap tabu
  search with up to 32 chains sharing each numpy step, from the greedy set, roundings of the
  relaxation and random sets, for the time limit (default n/550 s within 0.1..0.8 s; ``effort``
  scales it), stopping early if it reaches the certificate. Above: a
  self-balancing signed construction (``w = m/n + delta``, each row in random order takes the delta
  that keeps ``||v||`` smallest, then sweeps of single flips; count repaired exactly), then swap
  local search on candidate pools with exact pair deltas (a Gram matrix of the pool) and iterated
  local search until the time limit. One ``S v`` product per round, O(n d).

Every result carries a certificate. For any unit vector ``u`` and any removal set of size ``m``
(binary or fractional), ``||S^T w|| >= u . S^T w >= sum of the m smallest entries of S u``, so the
best such sum over a few ``u`` (the direction of the found solution, of the total sum, and of
a solve of the continuous relaxation) is a lower bound on the optimum: the result reports
``objective``, ``lower_bound`` and the gap between them. On the Gram-matrix path the relaxation is
solved exactly -- primal-dual active set, interior point where that cycles -- so the bound is the
relaxation's optimum (``info["bound_method"]``, ``info["relaxation_value"]``); above, projected
gradient in the d-space from the found set. The same inequality
bounds the largest eps-redundant set from above. The bound is 0 (useless) when 0 lies in the
relaxed feasible set -- e.g. when ``sum_i S_i ~ 0`` because the gradients include the regulariser or
there is none; the result's ``degenerate`` flags say so instead of reporting a meaningless gap.

The best bound of this family equals the optimum of the convex relaxation (``w`` in the capped
simplex) -- minimax -- so it is also 0 whenever the relaxation reaches 0, which is the normal case
when n >> d: with n = 50,000 rows in d = 5,130 dimensions, fractional weights have ~45,000 spare
degrees of freedom to cancel the sum. The integer optimum is then still positive but nothing cheap
certifies it (it is a lattice / discrepancy question; a MIP dual bound would need branch and bound
on 50,000 binaries). The large path therefore starts the relaxation at the found set and reports
its value (``info["relaxation_value"]``): a fractional point that good proves no bound of this kind
can exceed it, and ``degenerate["trivial_bound"]`` is set -- the bound stays an honest 0.
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..errors import PruneDataError

logger = logging.getLogger(__name__)

__all__ = ["PruningSolution", "solve_pruning", "solve_cardinality_fast", "solve_generalization_fast",
           "solve_exact", "cardinality_lower_bound", "max_removed_upper_bound"]

ArrayLike = Union[np.ndarray, torch.Tensor]

#: method="auto" uses the exact MIP up to this many rows, the fast solver beyond
EXACT_AUTO_MAX_N = 120
#: up to this many rows the fast solver works on the full Gram matrix (n x n) in numpy
SMALL_N = 2000


@dataclass
class PruningSolution:
    """The removed set and what is known about its quality.

    ``objective`` is the achieved ``||sum_{removed} S_i||``. ``lower_bound`` is a certified lower
    bound on the smallest achievable norm for removing ``len(removed)`` samples (under the same
    class quotas), ``gap = objective - lower_bound`` and ``rel_gap = gap / objective``. For the
    generalisation problem, ``max_removed_bound`` is a certified upper bound on the size of the
    largest eps-redundant set (``size_gap`` samples more than found at most).

    ``gen_gap_estimate`` is the paper's generalisation-gap estimate ``eps/n`` of Theorem 1, where the
    theorem's eps is ``||sum I_param(z_i)|| = n * objective`` (S already carries the 1/n), i.e. the
    first-order parameter change; the test-loss change is at most this times ``||grad L_test||``.
    """

    removed: np.ndarray
    n: int
    problem: str
    objective: float
    lower_bound: float
    status: str
    time: float
    solver: str
    eps: Optional[float] = None
    max_removed_bound: Optional[int] = None
    degenerate: Dict[str, Any] = field(default_factory=dict)
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> np.ndarray:
        mask = np.ones(self.n, dtype=bool)
        mask[self.removed] = False
        return np.flatnonzero(mask)

    @property
    def num_removed(self) -> int:
        return int(self.removed.size)

    @property
    def gap(self) -> float:
        return max(0.0, self.objective - self.lower_bound)

    @property
    def rel_gap(self) -> float:
        return self.gap / self.objective if self.objective > 0 else 0.0

    @property
    def size_gap(self) -> Optional[int]:
        return None if self.max_removed_bound is None else max(0, self.max_removed_bound - self.num_removed)

    @property
    def gen_gap_estimate(self) -> float:
        return self.objective

    def metrics(self) -> Dict[str, Any]:
        d = {
            "problem": self.problem, "solver": self.solver, "status": self.status,
            "achieved_norm": self.objective, "lower_bound": self.lower_bound, "gap": self.gap,
            "rel_gap": self.rel_gap, "eps_over_n": self.gen_gap_estimate, "num_removed": self.num_removed,
            "solve_seconds": self.time,
        }
        if self.eps is not None:
            d["eps"] = self.eps
        if self.max_removed_bound is not None:
            d["max_removed_bound"] = self.max_removed_bound
            d["size_gap"] = self.size_gap
        if self.degenerate:
            d["degenerate"] = self.degenerate
        # how the bound was obtained and the relaxation's value at its last fractional point (no bound
        # of this kind can exceed it)
        for k in ("bound_method", "relaxation_value"):
            if self.info.get(k) is not None:
                d[k] = self.info[k]
        return d

    def __repr__(self) -> str:
        s = (f"PruningSolution({self.problem}, removed {self.num_removed}/{self.n}, norm {self.objective:.4g}, "
             f"bound {self.lower_bound:.4g}, gap {100 * self.rel_gap:.1f}%, {self.status}, {self.solver}, "
             f"{self.time:.2f}s")
        if self.max_removed_bound is not None:
            s += f", max removable <= {self.max_removed_bound}"
        return s + ")"


# --------------------------------------------------------------------------- input checks
def _as_matrix(S: ArrayLike) -> torch.Tensor:
    if isinstance(S, np.ndarray):
        S = torch.from_numpy(S)
    if not isinstance(S, torch.Tensor):
        raise PruneDataError(f"S must be a numpy array or torch tensor, got {type(S).__name__}")
    if S.ndim != 2 or S.shape[0] < 2 or S.shape[1] < 1:
        raise PruneDataError(f"S must be a 2-D matrix (n samples x d parameters) with n >= 2; got shape {tuple(S.shape)}")
    if not S.is_floating_point():
        S = S.double()
    finite = bool(np.isfinite(S.detach().numpy()).all()) if S.device.type == "cpu" else bool(torch.isfinite(S).all())
    if not finite:
        raise PruneDataError("S contains NaN or infinite values; check the model and the damping of the Hessian")
    return S


def _check_m(m: Any, n: int, groups: Optional[np.ndarray] = None) -> int:
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
        raise PruneDataError(f"the number of samples to remove must be an integer, got {m!r}")
    m = int(m)
    if not 1 <= m <= n - 1:
        raise PruneDataError(
            f"the number of samples to remove must lie in [1, {n - 1}] for n={n} samples; got {m}. "
            "(keep = n - remove: keeping all or none is not a pruning problem)"
        )
    return m


def _check_eps(eps: Any) -> float:
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise PruneDataError(f"eps must be a non-negative number, got {eps!r}") from None
    if not math.isfinite(e) or e < 0:
        raise PruneDataError(
            f"eps bounds the norm of the parameter change and must be a finite number >= 0; got {eps!r}"
        )
    return e


def _groups(groups: Optional[Sequence[int]], n: int) -> Optional[np.ndarray]:
    if groups is None:
        return None
    g = np.asarray(groups).reshape(-1)
    if g.size != n:
        raise PruneDataError(f"groups must give one label per row of S ({n}), got {g.size}")
    return g


def _group_quota(groups: np.ndarray, m: int) -> Dict[Any, int]:
    """Per-group removal counts proportional to group size (largest remainder), summing to m."""
    labels, counts = np.unique(groups, return_counts=True)
    n = counts.sum()
    exact = counts * m / n
    q = np.floor(exact).astype(int)
    rest = m - q.sum()
    order = np.argsort(-(exact - q), kind="stable")
    for k in order[:rest]:
        q[k] += 1
    # every group keeps at least one sample when that is possible at all
    cap = counts - 1 if m <= n - counts.size else counts
    q = np.minimum(q, cap)
    # re-distribute if a cap was hit
    short = m - q.sum()
    for k in order:
        if short <= 0:
            break
        room = cap[k] - q[k]
        add = min(room, short)
        q[k] += add
        short -= add
    assert int(q.sum()) == m, (q, m)
    return {lab: int(c) for lab, c in zip(labels.tolist(), q.tolist())}


# --------------------------------------------------------------------------- bounds
def _m_smallest_sum(x: torch.Tensor, m: int) -> float:
    if m <= 0:
        return 0.0
    return float(torch.topk(x, m, largest=False, sorted=False).values.double().sum())


def _phi(Su: torch.Tensor, m: int, group_idx: Optional[List[torch.Tensor]], quota: Optional[List[int]]) -> float:
    if group_idx is None:
        return _m_smallest_sum(Su, m)
    return sum(_m_smallest_sum(Su[ix], q) for ix, q in zip(group_idx, quota))


def _directions_matvec64(S: torch.Tensor, directions: Sequence[ArrayLike], chunk: int = 8192) -> List[torch.Tensor]:
    """``S u / ||u||`` in float64 for every non-zero finite direction, in one pass over ``S``."""
    us = []
    for u in directions:
        u = torch.as_tensor(u, device=S.device).to(torch.float64).reshape(-1)
        nu = float(u.norm())
        if nu > 0 and math.isfinite(nu):
            us.append(u / nu)
    if not us:
        return []
    U = torch.stack(us, 1)
    out = torch.empty(S.shape[0], U.shape[1], dtype=torch.float64, device=S.device)
    for s in range(0, S.shape[0], chunk):
        out[s:s + chunk] = S[s:s + chunk].to(torch.float64) @ U
    return list(out.T)


def cardinality_lower_bound(S: ArrayLike, m: int, directions: Sequence[ArrayLike], *,
                            groups: Optional[Sequence[int]] = None, _trusted: bool = False) -> float:
    """``max_u sum of the m smallest entries of S u / ||u||`` over ``directions`` (and 0): a certified
    lower bound on ``min_{|W|=m} ||sum_{i in W} S_i||`` (with per-group quotas when ``groups`` given)."""
    S = S if _trusted else _as_matrix(S)
    n = S.shape[0]
    m = _check_m(m, n)
    gi, quota = _group_index(_groups(groups, n), m, S.device)
    best = 0.0
    for Su in _directions_matvec64(S, directions):
        best = max(best, _phi(Su, m, gi, quota))
    return best


def max_removed_upper_bound(S: ArrayLike, eps: float, directions: Sequence[ArrayLike], *, _trusted: bool = False) -> int:
    """Certified upper bound on the size of the largest set with ``||sum S_i|| <= eps``: for each unit
    ``u`` the cumulative sums of sorted ``S u`` rise above ``eps`` at some size no set can reach."""
    S = S if _trusted else _as_matrix(S)
    eps = _check_eps(eps)
    n = S.shape[0]
    ub = n
    for Su in _directions_matvec64(S, directions):
        c = torch.cumsum(torch.sort(Su).values, 0)
        over = torch.nonzero(c > eps * (1 + 1e-12) + 1e-300)
        if over.numel():
            ub = min(ub, int(over[0]))  # sizes >= first index+1 are infeasible
    return ub


def _group_index(groups: Optional[np.ndarray], m: int, device) -> tuple:
    if groups is None:
        return None, None
    q = _group_quota(groups, m)
    gi = [torch.as_tensor(np.flatnonzero(groups == lab), device=device) for lab in q]
    return gi, [q[lab] for lab in q]


# --------------------------------------------------------------------------- relaxation (for the bound)
def _proj_capped_simplex(z: torch.Tensor, m: int, iters: int = 60) -> torch.Tensor:
    """Euclidean projection onto {0 <= w <= 1, sum w = m} by bisection on the shift."""
    lo = float(z.min()) - 1.0
    hi = float(z.max())
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        s = float((z - mid).clamp(0, 1).sum())
        if s > m:
            lo = mid
        else:
            hi = mid
    return (z - 0.5 * (lo + hi)).clamp(0, 1)


def _relaxation_directions(S: torch.Tensor, m: int, gi, quota, *, iters: int, deadline: float,
                           x0: Optional[torch.Tensor] = None) -> tuple:
    """Accelerated projected gradient on min 1/2||S^T w||^2 over the (grouped) capped simplex.

    Returns (best direction u found, its bound, number of iterations). Each gradient ``S S^T y``
    gives a bound for free: ``u = S^T y / ||S^T y||``.
    """
    n = S.shape[0]
    dt = S.dtype

    def proj(z):
        if gi is None:
            return _proj_capped_simplex(z, m)
        out = torch.empty_like(z)
        for ix, q in zip(gi, quota):
            out[ix] = _proj_capped_simplex(z[ix], q)
        return out

    if x0 is None:
        if gi is None:
            w = torch.full((n,), m / n, dtype=dt, device=S.device)
        else:
            w = torch.empty(n, dtype=dt, device=S.device)
            for ix, q in zip(gi, quota):
                w[ix] = q / ix.numel()
    else:
        w = proj(x0.to(dt))
    # Lipschitz constant ||S||_2^2 by power iteration
    x = torch.randn(S.shape[1], dtype=dt, device=S.device, generator=torch.Generator(device=S.device).manual_seed(0))
    lip = 1.0
    for _ in range(3):
        x = S.T @ (S @ x)
        lip = float(x.norm())
        x = x / max(lip, 1e-300)
    lip *= 1.5  # 3 power steps underestimate ||S||^2; a margin keeps the projected gradient stable
    y, w_prev, t = w.clone(), w.clone(), 1.0
    best_u, best_b, it = None, 0.0, 0
    while it < iters and time.perf_counter() < deadline:
        v = S.T @ y
        nv = float(v.norm())
        if nv <= 0:
            break
        grad = S @ v
        b = _phi(grad / nv, m, gi, quota)
        if b > best_b:
            best_b, best_u = b, v / nv
        w = proj(y - grad / lip)
        t_new = 0.5 * (1 + math.sqrt(1 + 4 * t * t))
        y = w + ((t - 1) / t_new) * (w - w_prev)
        w_prev, t = w, t_new
        it += 1
    return best_u, best_b, it, w_prev


# --------------------------------------------------------------------------- fast solver
class _State:
    """Current removal set, ``v = sum_{removed} S_i`` and squared row norms."""

    def __init__(self, S: torch.Tensor, sel: torch.Tensor):
        self.S = S
        self.sel = sel
        self.r = torch.linalg.vector_norm(S, dim=1).to(torch.float64) ** 2
        self.v = S[sel].to(torch.float64).sum(0) if bool(sel.any()) else torch.zeros(S.shape[1], dtype=torch.float64, device=S.device)

    def g(self) -> torch.Tensor:
        return (self.S @ self.v.to(self.S.dtype)).to(torch.float64)

    def norm2(self) -> float:
        return float(self.v @ self.v)

    def refresh(self) -> None:
        self.v = self.S[self.sel].to(torch.float64).sum(0)


def _greedy(st: _State, m: int, gi, quota, rounds: int) -> None:
    """Block greedy: each round adds the rows that most reduce (least increase) ``||v||^2`` alone."""
    groups = gi if gi is not None else [None]
    quotas = quota if quota is not None else [m]
    remaining = [q - (int(st.sel[ix].sum()) if ix is not None else int(st.sel.sum())) for ix, q in zip(groups, quotas)]
    for t in range(rounds):
        if sum(remaining) <= 0:
            break
        score = 2 * st.g() + st.r
        score[st.sel] = float("inf")
        left = rounds - t
        add_all = []
        for k, ix in enumerate(groups):
            if remaining[k] <= 0:
                continue
            b = max(1, math.ceil(remaining[k] / left))
            sc = score if ix is None else score[ix]
            pick = torch.topk(sc, b, largest=False).indices
            if ix is not None:
                pick = ix[pick]
            add_all.append(pick)
            remaining[k] -= b
        pick = torch.cat(add_all)
        st.sel[pick] = True
        st.v += st.S[pick].to(torch.float64).sum(0)


def _signed_construct(st: _State, m: int, gi, quota, deadline: float, gen: np.random.Generator, *,
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
    sizes, quotas = [n], [m]
    if gi is not None:
        sizes, quotas = [], []
        for k, (ix, q) in enumerate(zip(gi, quota)):
            gidx[ix.cpu().numpy()] = k
            sizes.append(ix.numel())
            quotas.append(q)
    p = np.asarray(quotas, dtype=np.float64) / np.asarray(sizes, dtype=np.float64)
    prow = p[gidx]
    hi_row, lo_row = 1.0 - prow, -prow
    rn2 = st.r.cpu().numpy()
    lam2 = lam_scale * float(np.median(rn2))
    r = torch.zeros(S.shape[1], dtype=torch.float64, device=dev)
    pt = torch.as_tensor(prow, device=dev)
    for s in range(0, n, 8192):
        r += pt[s:s + 8192] @ S[s:s + 8192].to(torch.float64)
    c = np.zeros(len(sizes))
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


def _repair_count(st: _State, m: int, gi, quota) -> None:
    """Make the removal counts exact (per group): drop the surplus rows whose un-removal raises
    ``||v||^2`` least, then add rows by the block greedy."""
    groups = gi if gi is not None else [torch.arange(st.S.shape[0], device=st.S.device)]
    quotas = quota if quota is not None else [m]
    g = st.g()
    score = -2 * g + st.r
    drop = []
    for ix, q in zip(groups, quotas):
        cur = ix[st.sel[ix]]
        extra = cur.numel() - q
        if extra > 0:
            drop.append(cur[torch.topk(score[cur], extra, largest=False).indices])
    if drop:
        d_ = torch.cat(drop)
        st.sel[d_] = False
        st.v -= st.S[d_].to(torch.float64).sum(0)
    if int(st.sel.sum()) < m:
        _greedy(st, m, gi, quota, 4)

def _swap_round(st: _State, pool: int, gid: Optional[torch.Tensor], gi, tol: float = 1e-12,
                max_steps: int = 128) -> int:
    """One pool round of best-improvement swaps (removed row out, kept row in); returns #swaps."""
    g = st.g()
    dout = -2 * g + st.r          # change of ||v||^2 when un-removing i
    din = 2 * g + st.r            # change when removing j
    dout[~st.sel] = float("inf")
    din[st.sel] = float("inf")
    if gi is None:
        k_out = min(pool, int(st.sel.sum()))
        k_in = min(pool, int((~st.sel).sum()))
        out_c = torch.topk(dout, k_out, largest=False).indices
        in_c = torch.topk(din, k_in, largest=False).indices
    else:
        per = max(2, pool // len(gi))
        oc, ic = [], []
        for ix in gi:
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
    same = None
    if gid is not None:
        gp = gid[P]
        same = gp[:, None] == gp[None, :]
    swaps = 0
    v2 = v2_start = st.norm2()
    if st.S.dtype != torch.float64:
        tol = max(tol, 1e-6)
    thresh = -tol * max(v2, 1e-300)
    moved_out, moved_in = [], []
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
        moved_out.append(int(P[i]))
        moved_in.append(int(P[j]))
        swaps += 1
    if swaps:
        # apply the net change (a row may have moved twice)
        net = {}
        for i in moved_out:
            net[i] = net.get(i, 0) - 1
        for j in moved_in:
            net[j] = net.get(j, 0) + 1
        outs = [i for i, k in net.items() if k < 0]
        ins = [j for j, k in net.items() if k > 0]
        if outs:
            oi = torch.as_tensor(outs, device=st.S.device)
            st.sel[oi] = False
            st.v -= st.S[oi].to(torch.float64).sum(0)
        if ins:
            ii = torch.as_tensor(ins, device=st.S.device)
            st.sel[ii] = True
            st.v += st.S[ii].to(torch.float64).sum(0)
        # the pool deltas use g = S v in S's precision: keep the round only if the true norm fell
        if st.norm2() > v2_start * (1 - 1e-9):
            if outs:
                st.sel[oi] = True
                st.v += st.S[oi].to(torch.float64).sum(0)
            if ins:
                st.sel[ii] = False
                st.v -= st.S[ii].to(torch.float64).sum(0)
            return 0
    return swaps


def _local_search(st: _State, pool: int, gid, gi, deadline: float, max_rounds: int = 10_000) -> int:
    total = 0
    for _ in range(max_rounds):
        if time.perf_counter() > deadline:
            break
        k = _swap_round(st, pool, gid, gi)
        total += k
        if k == 0:
            break
    return total


def _small_search(G: np.ndarray, m: int, gid: Optional[np.ndarray], deadline: float, patience: int,
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

    def local(si, ui, g, v2):
        B = G2[si][:, ui]
        steps = 0
        while True:
            D = (dg[si] - 2.0 * g[si])[:, None] + (dg[ui] + 2.0 * g[ui])[None, :]
            D -= B
            k = int(D.argmin())
            a, b = divmod(k, ui.size)
            dv = float(D[a, b])
            if not dv < -tol * max(v2, 1e-300):
                return g, v2, steps
            i, j = si[a], ui[b]
            si[a], ui[b] = j, i
            g += G[j] - G[i]  # G is symmetric: rows instead of strided columns
            v2 += dv
            B[a, :] = G2[j, ui]
            B[:, b] = G2[si, i]
            steps += 1

    si = np.flatnonzero(start)
    ui = np.flatnonzero(~start)
    g = G[si].sum(0)
    v2 = float(g[si].sum())
    g, v2, _ = local(si, ui, g, v2)
    v2 = float(g[si].sum())
    swap_obj = math.sqrt(max(v2, 0.0))
    best_si, best_ui, best_g, best2 = si.copy(), ui.copy(), g.copy(), v2
    fails = iters = improved = 0
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
        v2 = float(g[si].sum())
        g, v2, _ = local(si, ui, g, v2)
        v2 = float(g[si].sum())
        iters += 1
        if v2 < best2 * (1 - 1e-12):
            best_si, best_ui, best_g, best2 = si, ui, g, v2
            fails, improved = 0, improved + 1
        else:
            fails += 1
    best_sel = np.zeros(n, dtype=bool)
    best_sel[best_si] = True
    return best_sel, swap_obj, iters, improved


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
#: how the chains other than the first start: "mixed" (half from roundings of the relaxation, half
#: random), "rounding" or "random"
START_MODE = "mixed"
#: the relaxation-kernel search runs when there are more than this many swap pairs m (n - m), on
#: a kernel of this many rows, for this share of the time limit
KERNEL_MIN_PAIRS = 25_000
KERNEL_SIZE = 200
KERNEL_SHARE = 0.6


def _tabu_chains(G: np.ndarray, m: int, gid: Optional[np.ndarray], starts: np.ndarray, deadline: float,
                 rng: np.random.Generator, *, target2: float = 0.0, patience: int = 1000,
                 stall: Optional[int] = None, offset: Optional[np.ndarray] = None,
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
    if stall is None:
        stall = TABU_STALL
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
            if TABU_FROM_BEST > 0 and rng.random() < TABU_FROM_BEST:
                s_ = gbest_si.copy()                  # intensify: kick the overall best instead
                mask_ = np.zeros(n, dtype=bool)
                mask_[s_] = True
                u_ = np.flatnonzero(~mask_)
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


def _random_starts(n: int, m: int, gid: Optional[np.ndarray], quota: Optional[List[int]], k: int,
                   rng: np.random.Generator) -> np.ndarray:
    """``k`` random removal masks (per-group quotas when ``gid`` is given)."""
    out = np.zeros((k, n), dtype=bool)
    for c in range(k):
        if gid is None:
            out[c, rng.choice(n, m, replace=False)] = True
        else:
            for lab, q in enumerate(quota):
                ix = np.flatnonzero(gid == lab)
                out[c, rng.choice(ix, q, replace=False)] = True
    return out


def _proj_capped_simplex_np(z: np.ndarray, q: float) -> np.ndarray:
    """Exact Euclidean projection onto ``{0 <= w <= 1, sum w = q}``: ``f(tau) = sum clip(z - tau, 0, 1)``
    is piecewise linear with breakpoints ``z_i`` and ``z_i - 1``; evaluate it at all of them (sorted
    ``z``, cumulative sums) and interpolate where it crosses ``q``."""
    k = z.size
    if q <= 0:
        return np.zeros(k)
    if q >= k:
        return np.ones(k)
    zs = np.sort(z)
    cs = np.concatenate([[0.0], np.cumsum(zs)])
    taus = np.sort(np.concatenate([zs, zs - 1.0]))

    def f(t):
        hi = np.searchsorted(zs, t + 1.0, side="left")
        lo = np.searchsorted(zs, t, side="right")
        return (k - hi) + (cs[hi] - cs[lo]) - t * (hi - lo)

    ft = f(taus)                                   # non-increasing in tau
    j = int(np.searchsorted(-ft, -q, side="left"))  # first breakpoint with f <= q
    if j == 0:
        tau = taus[0]
    elif j >= taus.size:
        tau = taus[-1]
    else:
        t0, t1, f0, f1 = taus[j - 1], taus[j], ft[j - 1], ft[j]
        tau = t1 if f0 == f1 else t0 + (f0 - q) * (t1 - t0) / (f0 - f1)
    return np.clip(z - tau, 0.0, 1.0)


def _fista_relaxation(G: np.ndarray, gl: List[np.ndarray], ql: List[int], deadline: float,
                      iters: int = 300) -> tuple:
    """Accelerated projected gradient (FISTA) on ``min w^T G w`` over the (grouped) capped simplex,
    from the uniform point; at most ``iters`` steps of one ``G y`` product each, or until ``deadline``.
    Returns ``(w, steps)``: a fractional point, used to start the search (randomised rounding) and
    as a direction of the bound -- valid whatever its accuracy."""
    n = G.shape[0]
    x = np.random.default_rng(0).normal(size=n)
    lip = 1.0
    for _ in range(12):                              # power iteration for ||G||
        x = G @ x
        lip = float(np.linalg.norm(x))
        if not lip > 0:
            return None, 0
        x /= lip
    lip *= 1.25

    def proj(z):
        out = np.empty_like(z)
        for ix, q in zip(gl, ql):
            out[ix] = _proj_capped_simplex_np(z[ix], q)
        return out

    w = np.empty(n)
    for ix, q in zip(gl, ql):
        w[ix] = q / max(ix.size, 1)
    y, t, k = w.copy(), 1.0, 0
    for k in range(1, iters + 1):
        wn = proj(y - (G @ y) / lip)
        tn = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        y = wn + ((t - 1.0) / tn) * (wn - w)
        w, t = wn, tn
        if time.perf_counter() > deadline:
            break
    return w, k


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
    mk = m - fixed1.size
    if not 1 <= mk <= kix.size - 1:
        return None
    return kix, fixed1


def _ils_large(st: _State, best_sel: torch.Tensor, best2: float, pool: int, gid, gi, deadline: float,
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
        _local_search(st, pool, gid, gi, deadline)
        iters += 1
        if st.norm2() < best2 * (1 - 1e-12):
            best_sel, best2 = st.sel.clone(), st.norm2()
            fails, improved = 0, improved + 1
        else:
            fails += 1
    return best_sel, iters, improved


def _pdas_relaxation(G: np.ndarray, gl: List[np.ndarray], ql: List[int], w0: np.ndarray, deadline: float,
                     max_iter: int = 40) -> tuple:
    """Exact solve of the relaxation ``min w^T G w, 0 <= w <= 1, sum_{i in g} w_i = q_g`` by the
    primal-dual active-set method (Hintermueller, Ito & Kunisch 2003), warm-started at ``w0``.

    Each step guesses which weights sit at 0, at 1 or in between from the previous iterate
    (``z = G w + mu``: at 0 if ``z > c w``, at 1 if ``z < c (w - 1)``), then solves the KKT system of
    the free weights (one multiplier per group) exactly. A repeated guess is a KKT point, i.e. the
    relaxation's optimum; the final solve gets one step of iterative refinement (the Gram matrix of
    tiny, nearly cancelling rows is ill-conditioned). Returns ``(w, converged)``; ``w`` is ``None``
    if no step could be taken. The method can cycle on larger ill-conditioned problems (a repeated
    earlier guess ends it): the caller falls back to :func:`_ipm_relaxation` then, and every iterate
    is only ever used as a *direction* for the bound, which is valid whatever its accuracy.
    """
    n = G.shape[0]
    c = float(np.mean(np.diag(G)))
    if not c > 0:
        return None, False
    glabels = np.zeros(n, dtype=np.int64)
    for k, ix in enumerate(gl):
        glabels[ix] = k
    ng = len(gl)
    qv = np.asarray(ql, dtype=np.float64)
    w = w0.astype(np.float64, copy=True)
    g = G @ w
    mu = np.empty(ng)
    for k, ix in enumerate(gl):
        inner = (w[ix] > 0) & (w[ix] < 1)
        # (mean, not np.median: its first call imports numpy.ma, ~7 ms)
        mu[k] = -float(np.mean(g[ix][inner] if inner.any() else g[ix])) if ix.size else 0.0
    z = g + mu[glabels]
    prev, w_out, seen = None, None, set()
    for _ in range(max_iter):
        if time.perf_counter() > deadline:
            break
        A0 = z > c * w
        A1 = z < c * (w - 1.0)
        free = ~(A0 | A1)
        key = np.packbits(A0).tobytes() + np.packbits(A1).tobytes()
        converged = key == prev
        if not converged and key in seen:
            break                                            # cycling: give up early
        prev = key
        seen.add(key)
        fi = np.flatnonzero(free)
        w = A1.astype(np.float64)
        k = fi.size
        if k:
            fg = glabels[fi]
            # groups with free weights get a multiplier (np.unique's first call costs ~6 ms: avoided)
            used = np.flatnonzero(np.bincount(fg, minlength=ng))
            col = np.searchsorted(used, fg)
            K = np.zeros((k + used.size, k + used.size))
            K[:k, :k] = G[np.ix_(fi, fi)]
            K[np.arange(k), k + col] = 1.0
            K[k + col, np.arange(k)] = 1.0
            r = np.empty(k + used.size)
            r[:k] = -(G[fi] @ w)
            r[k:] = qv[used] - np.bincount(glabels, weights=w, minlength=ng)[used]
            try:
                sol = np.linalg.solve(K, r)
                if converged:                                # one step of iterative refinement
                    sol += np.linalg.solve(K, r - K @ sol)
            except np.linalg.LinAlgError:
                sol = np.linalg.lstsq(K, r, rcond=None)[0]
            if not np.all(np.isfinite(sol)):
                break
            w[fi] = sol[:k]
            mu[used] = sol[k:]
        w_out = w
        if converged:
            # a repeated guess is the optimum only if it is feasible (a group without free weights
            # may have the wrong count; then the method is stuck, not converged)
            tol = 1e-9 * max(1.0, float(qv.max()))
            sums = np.bincount(glabels, weights=w, minlength=ng)
            ok = bool(np.all(np.abs(sums - qv) <= tol) and w.min() >= -tol and w.max() <= 1 + tol)
            return w, ok
        g = G @ w
        z = g + mu[glabels]
        z[fi] = 0.0
    return w_out, False


def _small_bound(G: np.ndarray, m: int, groups_idx: Optional[List[np.ndarray]], quota: Optional[List[int]],
                 w_found: np.ndarray, iters: int, deadline: float = math.inf,
                 info: Optional[Dict[str, Any]] = None) -> float:
    """Dual bound in the n-space of the Gram matrix: for w with v = S^T w, S u = G w / ||v||.

    Evaluates the directions of the found set and of the total; with ``iters > 0`` it then solves
    the relaxation ``min ||S^T w||, w in the (grouped) capped simplex``: first by the primal-dual
    active-set method warm-started at the found set (:func:`_pdas_relaxation`; a few small linear
    solves, exact -- the bound then equals the relaxation's optimum, the best any bound of this kind
    can give), and if that cycles by the interior-point method (:func:`_ipm_relaxation`, at most
    ``iters`` iterations), every iterate of which is a direction. Stops at ``deadline`` (the
    active-set method gets at most half of the time). ``info`` (a dict) receives how the bound was
    obtained and the relaxation's value at the last fractional point.
    """
    n = G.shape[0]
    gl = groups_idx if groups_idx is not None else [np.arange(n)]
    ql = quota if quota is not None else [m]
    single = groups_idx is None

    def phi(x):
        if single:
            return float(np.partition(x, m - 1)[:m].sum())
        return sum(float(np.partition(x[ix], q - 1)[:q].sum()) if q > 0 else 0.0 for ix, q in zip(gl, ql))

    best = 0.0
    for w in (w_found, np.ones(n)):
        gw = G @ w
        nv = math.sqrt(max(float(w @ gw), 0.0))
        if nv > 0:
            best = max(best, phi(gw / nv))
    if iters <= 0:
        return best
    now = time.perf_counter()
    # the active-set solve gets at most half of the time left; the interior-point method the rest if needed
    w_pd, conv = _pdas_relaxation(G, gl, ql, w_found, now + 0.5 * (deadline - now) if math.isfinite(deadline) else deadline)
    if info is not None:
        info["bound_method"], info["relaxation_value"] = "active-set", None
    if w_pd is not None:
        gw = G @ w_pd
        nv = math.sqrt(max(float(w_pd @ gw), 0.0))
        if nv > 0:
            b = phi(gw / nv)
            best = max(best, b)
            if conv and info is not None:
                info["relaxation_value"] = nv
            # at the relaxation's optimum the bound equals its value: nothing left to gain
            if conv and b >= nv * (1 - 1e-9):
                return best
    if time.perf_counter() + 1e-10 * n ** 3 > deadline:
        return best          # not even one interior-point iteration (a Cholesky of n x n) fits
    if info is not None:
        info["bound_method"] = "interior point"
    for w in _ipm_relaxation(G, gl, ql, deadline, max_iter=iters):
        gw = G @ w
        nv = math.sqrt(max(float(w @ gw), 0.0))
        if nv > 0:
            best = max(best, phi(gw / nv))
            if info is not None:
                info["relaxation_value"] = nv
    return best


def _ipm_relaxation(G: np.ndarray, gl: List[np.ndarray], ql: List[int], deadline: float, max_iter: int = 60,
                    tol: float = 1e-10):
    """Mehrotra predictor-corrector interior-point method for the relaxation
    ``min 1/2 w^T G w, sum_{i in g} w_i = q_g, 0 <= w <= 1``; yields every (feasible, interior)
    iterate, the last one at the optimum to ``tol`` or when ``deadline`` / ``max_iter`` is reached.

    For the problems the active-set method cycles on (hundreds to thousands of rows, nearly
    cancelling, ill-conditioned): 10-20 iterations, each one Cholesky factorisation of
    ``G + diag(lam/w + nu/(1-w))`` (n^3/3 flops). The iterates are only used as directions of the
    bound, which is valid whatever their accuracy."""
    n = G.shape[0]
    ng = len(gl)
    lab = np.zeros(n, dtype=np.int64)
    for k, ix in enumerate(gl):
        lab[ix] = k
    q = np.asarray(ql, dtype=np.float64)
    sizes = np.maximum(np.bincount(lab, minlength=ng), 1).astype(np.float64)
    E = np.zeros((n, ng))
    E[np.arange(n), lab] = 1.0
    w = (q / sizes)[lab]
    if np.any(w <= 0) or np.any(w >= 1):        # a quota of 0 or of the whole group: nothing to relax
        yield w
        return
    scale = float(np.mean(np.diag(G)))
    if not scale > 0:
        return
    lam, nu, y = np.full(n, scale), np.full(n, scale), np.zeros(ng)
    idx = np.arange(n)

    def max_step(x, dx):
        neg = dx < 0
        return min(1.0, float(np.min(-x[neg] / dx[neg]))) if neg.any() else 1.0

    for _ in range(max_iter):
        if time.perf_counter() > deadline:
            return
        s, t = w, 1.0 - w
        rd = G @ w + E @ y - lam + nu                  # dual residual (primal residual is 0: E^T w = q)
        mu = float(s @ lam + t @ nu) / (2 * n)
        if mu < tol * scale and float(np.abs(rd).max()) < 1e-9 * scale:
            return
        M = G.copy()
        M[idx, idx] += lam / s + nu / t
        L, bad = torch.linalg.cholesky_ex(torch.from_numpy(M))
        if int(bad):
            return

        def msolve(b):
            bt = torch.from_numpy(np.ascontiguousarray(b.reshape(n, -1)))
            return torch.cholesky_solve(bt, L).numpy().reshape(b.shape)

        MiE = msolve(E)
        ES = E.T @ MiE

        def newton(rc_l, rc_u):
            # G dw + E dy - dlam + dnu = -rd;  E^T dw = 0;  lam dw + s dlam = rc_l - s lam;
            # -nu dw + t dnu = rc_u - t nu
            r = -rd + (rc_l - s * lam) / s - (rc_u - t * nu) / t
            Mir = msolve(r)
            dy = np.linalg.solve(ES, E.T @ Mir)
            dw = Mir - MiE @ dy
            return dw, dy, (rc_l - s * lam - lam * dw) / s, (rc_u - t * nu + nu * dw) / t

        dw, dy, dl, dn = newton(np.zeros(n), np.zeros(n))             # predictor (affine scaling)
        ap = min(max_step(s, dw), max_step(t, -dw))
        ad = min(max_step(lam, dl), max_step(nu, dn))
        mu_aff = float((s + ap * dw) @ (lam + ad * dl) + (t - ap * dw) @ (nu + ad * dn)) / (2 * n)
        sigma = (mu_aff / mu) ** 3
        dw, dy, dl, dn = newton(sigma * mu - dw * dl, sigma * mu + dw * dn)  # corrector
        ap = 0.995 * min(max_step(s, dw), max_step(t, -dw))
        ad = 0.995 * min(max_step(lam, dl), max_step(nu, dn))
        w = w + ap * dw
        y, lam, nu = y + ad * dy, lam + ad * dl, nu + ad * dn
        if not np.all(np.isfinite(w)):
            return
        yield w


#: a Gram matrix with at most this many multiply-adds is computed single-threaded: tiny BLAS calls
#: gain nothing from threads and, on a loaded machine, a second thread waits for a time slice
_TINY_GRAM_FLOPS = 1 << 27


def _gram64(S: torch.Tensor) -> tuple:
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


def _tabu_chains_for(n: int, m: int) -> int:
    """Number of tabu chains on the Gram-matrix path: ``TABU_BATCH_ELEMENTS`` swap deltas per step
    in all, at most ``TABU_MAX_CHAINS``."""
    return int(max(1, min(TABU_MAX_CHAINS, TABU_BATCH_ELEMENTS // max(1, m * (n - m)))))


def _small_patience(n: int, m: int) -> int:
    """Default number of tabu kicks (all chains together) without a new best on the Gram-matrix path:
    50 per chain (fewer for tiny problems: ``m (n - m) / 10``, at least 2); on all but tiny problems
    the time limit ends the search first."""
    return int(_tabu_chains_for(n, m) * min(50, max(2, m * (n - m) // 10)))


def _ils_patience(n: int, m: int) -> int:
    """Default number of perturbations without improvement of the iterated local search (n <= d)."""
    return int(min(40, max(8, math.sqrt(m * (n - m)) // 2)))


def _small_time_limit(n: int) -> float:
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


def _tabu_path(G, m, gid, quota, gl, ql, sel, obj_greedy, target2, patience, t0, time_limit, t_greedy, rng):
    """The Gram-matrix search for n > d: relaxation, (kernel) tabu chains; see _cardinality_small."""
    n = G.shape[0]
    deadline = t0 + time_limit
    chains = _tabu_chains_for(n, m)
    # the continuous relaxation (a share of the time): near-integral where n > d, so its roundings
    # are far better starts than random sets (and it is a direction of the certificate)
    w_rel, rel_steps = None, 0
    if m * (n - m) >= RELAX_MIN_PAIRS:     # small problems: random starts do as well
        w_rel, rel_steps = _fista_relaxation(G, gl, ql, t0 + RELAX_SHARE * time_limit, iters=RELAX_ITERS)
    t_relax = time.perf_counter() - t0 - t_greedy
    # greedy -> best-improvement swaps (small problems), then tabu chains from there and from
    # roundings of the relaxation, all sharing each step (see _tabu_chains)
    if m * (n - m) <= TABU_DESCENT_MAX:
        best_sel, obj_swap, _, _ = _small_search(G, m, gid, deadline, 0, rng, sel, target2=target2)
    else:
        best_sel, obj_swap = sel, obj_greedy
    if w_rel is not None and START_MODE != "random":
        rs = _rounded_starts(w_rel, gl, ql, chains, rng)
        if START_MODE == "mixed" and chains > 2:
            rs[chains // 2:] = _random_starts(n, m, gid, quota, chains - chains // 2, rng)
    else:
        rs = _random_starts(n, m, gid, quota, chains, rng)
    starts = np.concatenate([best_sel[None], rs[:chains - 1]]) if chains > 1 else rs[:1]
    kern = None
    if gid is None and w_rel is not None and m * (n - m) > KERNEL_MIN_PAIRS:
        kern = _relaxation_kernel(G, w_rel, m, KERNEL_SIZE)
    if kern is not None:
        # rows the relaxation leaves fractional or nearly so (small reduced cost) are searched with
        # many chains; the others stay as the relaxation has them. A share of the time, then all
        # rows again from the kernel's best
        kix, fixed1 = kern
        mk = m - fixed1.size
        Gk = G[np.ix_(kix, kix)]
        off = G[kix][:, fixed1].sum(1)
        const = float(G[np.ix_(fixed1, fixed1)].sum())
        kch = _tabu_chains_for(kix.size, mk)
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


def _cardinality_small(S: torch.Tensor, m: int, g_arr: Optional[np.ndarray], *, time_limit: float, seed: int,
                       patience: Optional[int], certify: bool, bound_iters: int,
                       bound_time: Optional[float] = None, exhaustive_max: int = EXHAUSTIVE_MAX,
                       gram: Optional[tuple] = None) -> PruningSolution:
    t0 = time.perf_counter()
    A, G = gram if gram is not None else _gram64(S)
    n = A.shape[0]
    dg = np.diag(G).copy()
    if patience is None:
        patience = _small_patience(n, m)
    if g_arr is None:
        gid, groups_idx, quota = None, None, None
    else:
        labs, gidx = np.unique(g_arr, return_inverse=True)
        qd = _group_quota(g_arr, m)
        quota = [qd[lab] for lab in labs.tolist()]
        groups_idx = [np.flatnonzero(gidx == k) for k in range(labs.size)]
        gid = gidx
    if math.comb(n, m) <= exhaustive_max:
        return _cardinality_exhaustive(A, G, m, gid, quota, t0)
    # one-at-a-time greedy (exact for the Gram matrix): add the row that least increases ||v||^2
    sel = np.zeros(n, dtype=bool)
    g = np.zeros(n)
    score = dg.copy()
    if gid is None:
        for _ in range(m):
            j = int(np.argmin(score))
            sel[j] = True
            g += G[j]
            score = 2 * g + dg
            score[sel] = np.inf
    else:
        left = np.asarray(quota, dtype=np.int64)
        for _ in range(m):
            sc = np.where(left[gid] > 0, score, np.inf)
            j = int(np.argmin(sc))
            sel[j] = True
            left[gid[j]] -= 1
            g += G[j]
            score = 2 * g + dg
            score[sel] = np.inf
    obj_greedy = math.sqrt(max(float(g[sel].sum()), 0.0))
    t_greedy = time.perf_counter() - t0
    target2 = 0.0
    if certify:  # the free part of the certificate first: the ILS stops if it reaches it
        target2 = _small_bound(G, m, groups_idx, quota, sel.astype(np.float64), 0) ** 2
    rng = np.random.default_rng(seed)
    deadline = t0 + time_limit
    gl = groups_idx if groups_idx is not None else [np.arange(n)]
    ql = quota if quota is not None else [m]
    if A.shape[1] >= n:
        # n <= d: many sets cancel almost exactly; greedy -> swaps -> iterated local search with a
        # patience finds SCIP's optimum in milliseconds (benchmarks/solver.py, d = 1,290)
        best_sel, obj_swap, kicks, _ = _small_search(G, m, gid, deadline, patience, rng, sel, target2=target2)
        chains = steps = rel_steps = 0
        w_rel, kern, t_relax = None, None, 0.0
    else:
        best_sel, obj_swap, chains, steps, kicks, rel_steps, w_rel, kern, t_relax = _tabu_path(
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
        lb = _small_bound(G, m, groups_idx, quota, best_sel.astype(np.float64), bound_iters,
                          deadline=time.perf_counter() + budget, info=binfo)
        if w_rel is not None:    # the relaxation's point that started the search is a direction too
            lb = max(lb, cardinality_lower_bound(S, m, [torch.from_numpy(A.T @ w_rel)], groups=g_arr, _trusted=True))
        lb = min(objective, max(lb, math.sqrt(target2)))
        degenerate = _degeneracy(None, A.sum(0), dg, lb, objective)
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


def _default_time_limit(n: int, d: int) -> float:
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

    With at most ``exhaustive_max`` possible removal sets every one is scored (proven optimal).

    Construction (``construct="signed"``: self-balancing signed greedy + single-flip sweeps for at
    most ``construct_frac`` of the time, see :func:`_signed_construct`; ``"greedy"``: the older block
    greedy with ``greedy_rounds`` blocks) -> swap local search on pools of ``pool`` candidates ->
    iterated local search (perturb a few rows, local search, keep if better) until ``time_limit``
    seconds (default scales with n*d, at most 30 s) or ``ils_patience`` perturbations without
    improvement. Then a lower bound from the relaxation (at most ``bound_iters`` gradient steps or
    ``bound_time`` seconds; ``certify=False`` skips it and reports a bound of 0). Up to
    ``gram_max_n`` rows the search runs on the full Gram matrix instead: with n <= d exact
    best-improvement swaps and iterated local search (``small_patience`` perturbations without
    improvement, default from :func:`_ils_patience`); with n > d the relaxation, kernel and tabu
    chains of :func:`_tabu_path` for the whole time limit (default :func:`_small_time_limit`;
    ``small_patience`` then counts kicks without a new best, default :func:`_small_patience`). There the
    certificate (the relaxation solved exactly: active set, else interior point) gets as much time as
    the search (n <= d) or a tenth of it (n > d), and at least about 20 interior-point iterations up to
    0.1 s, unless ``bound_time`` is given. ``effort`` multiplies the default time limit and patience
    (``effort=20`` reached SCIP's proven optimum on the n > d family of benchmarks/solver.py).
    The n > d search is time-limited, so its result can depend on the machine's load (as on the
    large path; the n <= d path stops on its patience).
    """
    t0 = time.perf_counter()
    S = _as_matrix(S)
    n, d = S.shape
    m = _check_m(m, n)
    g_arr = _groups(groups, n)
    gi, quota = _group_index(g_arr, m, S.device)
    gid = None if g_arr is None else torch.as_tensor(np.unique(g_arr, return_inverse=True)[1], device=S.device)
    if isinstance(effort, bool) or not isinstance(effort, (int, float)) or not (math.isfinite(effort) and effort > 0):
        raise PruneDataError(f"effort must be a positive number (1 = default search time; 10 = ten times as long), "
                             f"got {effort!r}")
    # the Gram-matrix path with more rows than dimensions (n > d) runs the relaxation + tabu search
    # for its time limit; with n <= d (many sets cancel almost exactly) iterated local search stops
    # after a patience of perturbations without improvement
    tabu = n <= gram_max_n and n > d
    if time_limit is None:
        time_limit = effort * (_small_time_limit(n) if tabu else _default_time_limit(n, d))
    if time_limit <= 0:
        raise PruneDataError(f"time_limit must be positive seconds, got {time_limit}")
    if small_patience is None and n <= gram_max_n:
        small_patience = int(math.ceil(effort * (_small_patience(n, m) if tabu else _ils_patience(n, m))))
    deadline = t0 + time_limit
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if n <= gram_max_n:
        return _cardinality_small(S, m, g_arr, time_limit=time_limit, seed=seed, patience=small_patience,
                                  certify=certify, bound_iters=max(bound_iters, 400), bound_time=bound_time,
                                  exhaustive_max=exhaustive_max, gram=_gram)

    st = _State(S, torch.zeros(n, dtype=torch.bool, device=S.device))
    sweeps = 0
    if construct == "signed":
        sweeps, _ = _signed_construct(st, m, gi, quota, t0 + construct_frac * time_limit,
                                      np.random.default_rng(seed))
        _repair_count(st, m, gi, quota)
    elif construct == "greedy":
        _greedy(st, m, gi, quota, min(greedy_rounds, m))
    else:
        raise PruneDataError(f"construct must be 'signed' or 'greedy', got {construct!r}")
    t_greedy = time.perf_counter() - t0
    obj_greedy = math.sqrt(st.norm2())
    _local_search(st, pool, gid, gi, deadline)
    t_swap = time.perf_counter() - t0 - t_greedy
    best_sel, best2 = st.sel.clone(), st.norm2()
    obj_swap = math.sqrt(best2)
    best_sel, ils_iters, improved = _ils_large(st, best_sel, best2, pool, gid, gi, deadline, ils_patience, gen)
    st.sel = best_sel
    st.refresh()
    v = st.v
    objective = float(v.norm())
    t_search = time.perf_counter() - t0
    # certificate
    tb = time.perf_counter()
    lb, rel_iters, degenerate, relax_value = 0.0, 0, {}, None
    if certify:
        total = _chunked_sum64(S)
        dirs = [v, total]
        bdeadline = tb + (bound_time if bound_time is not None else max(2.0, 0.5 * time_limit))
        # start the relaxation at the found set: its value then says at once how far below the
        # objective the relaxed optimum lies (no bound of this kind can exceed it)
        u_rel, b_rel, rel_iters, w_rel = _relaxation_directions(S, m, gi, quota, iters=bound_iters, deadline=bdeadline,
                                                                x0=best_sel.to(S.dtype))
        if u_rel is not None:
            dirs.append(u_rel)
        relax_value = float((S.T @ w_rel.to(S.dtype)).norm())
        lb = cardinality_lower_bound(S, m, dirs, groups=g_arr, _trusted=True)
        degenerate = _degeneracy(S, total, st.r, lb, objective)
    t_bound = time.perf_counter() - tb
    removed = torch.nonzero(best_sel).flatten().cpu().numpy()
    status = "optimal" if objective - lb <= 1e-9 * max(objective, 1e-300) else "feasible"
    sol = PruningSolution(removed=removed, n=n, problem="cardinality", objective=objective, lower_bound=lb,
                          status=status, time=time.perf_counter() - t0, solver="fast", degenerate=degenerate,
                          info={"greedy_objective": obj_greedy, "swap_objective": obj_swap, "ils_iterations": ils_iters,
                                "ils_improvements": improved, "construct": construct, "construct_sweeps": sweeps,
                                "seconds_greedy": t_greedy, "seconds_swap": t_swap,
                                "seconds_search": t_search, "seconds_bound": t_bound, "relaxation_iterations": rel_iters,
                                "relaxation_value": relax_value,
                                "bound_method": "projected gradient" if certify else None,
                                "group_quota": None if quota is None else dict(zip(np.unique(g_arr).tolist(), quota))})
    logger.info("%r", sol)
    return sol


def _chunked_sum64(S: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    out = torch.zeros(S.shape[1], dtype=torch.float64, device=S.device)
    for s in range(0, S.shape[0], chunk):
        out += S[s:s + chunk].to(torch.float64).sum(0)
    return out


def _degeneracy(S: torch.Tensor, total: torch.Tensor, r: torch.Tensor, lb: float, objective: float,
                eps: Optional[float] = None) -> Dict[str, Any]:
    """Flags for the cases where the certificate says nothing (see the module docstring)."""
    flags: Dict[str, Any] = {}
    scale = math.sqrt(float(r.sum()))  # norm of a sum of the rows with random signs
    tn = float(np.linalg.norm(total)) if isinstance(total, np.ndarray) else float(total.norm())
    ratio = tn / scale if scale > 0 else 0.0
    flags_out = {"total_norm": tn, "total_to_random_ratio": ratio}
    if ratio < 1e-3:
        flags["total_sum_near_zero"] = (
            "sum_i S_i is ~0 (the per-sample gradients sum to zero: they include the regulariser, or there "
            "is none): removing everything looks harmless to first order and no useful bound exists"
        )
    if lb <= 0 and objective > 0:
        flags["trivial_bound"] = ("the lower bound is 0: 0 lies in the relaxed feasible set, so the gap to "
                                  "the optimum is unknown (not necessarily large)")
    if eps is not None and tn <= eps:
        flags["all_feasible"] = (f"||sum_i S_i|| = {tn:.4g} <= eps = {eps:.4g}: removing every sample is "
                                 "eps-redundant; eps is too large to constrain anything")
    if flags:
        flags.update(flags_out)
    return flags


def _small_max_removed_bound(S: torch.Tensor, gram: tuple, eps: float, removed: np.ndarray, ub: int,
                             deadline: float, dirs: List[torch.Tensor]) -> tuple:
    """Tighten the certified largest eps-feasible size for a small ``S`` with exact relaxations.

    The relaxation's value ``r(k) = min ||S^T w||`` over fractional sets of size ``k`` is convex in
    ``k`` and at most ``eps`` at the found size, so ``{k : r(k) <= eps}`` is an interval; a binary
    search over ``(found, ub]`` solves the relaxation exactly (:func:`_pdas_relaxation`, else
    :func:`_ipm_relaxation`) and keeps
    every direction whose sorted projections certify some size infeasible (then every larger size
    is too, see :func:`max_removed_upper_bound`). Returns ``(bound, relaxation solves)``."""
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
        w, converged = _pdas_relaxation(G, idx, [k], w0, deadline)
        solves += 1
        cands = [] if w is None else [w]
        if not converged:                              # the active-set method cycled: interior point
            last = None
            for last in _ipm_relaxation(G, idx, [k], deadline):
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
    all sizes up to that bound: a scan down from it with exhaustive solves, proven optimal); the best feasible set is returned with a
    certified upper bound on the largest feasible size (sorted projections ``S u``, see module doc).
    Up to ``gram_max_n`` rows the directions come from exact relaxations at a binary search of sizes
    (:func:`_small_max_removed_bound`; the bound is then where the relaxation's optimum crosses eps,
    given time: at least ~1e-9 n^3 s), above from projected gradient at one more than the found size.
    """
    t0 = time.perf_counter()
    S = _as_matrix(S)
    n, d = S.shape
    eps = _check_eps(eps)
    cap = n - 1 if max_removed is None else _check_m(max_removed, n)
    if time_limit is None:
        time_limit = _default_time_limit(n, d) * 4
    if time_limit <= 0:
        raise PruneDataError(f"time_limit must be positive seconds, got {time_limit}")
    total = _chunked_sum64(S)
    # the Gram matrix of a small S, computed once for every cardinality solve and the bound search
    gram = _gram64(S) if n <= card_kw.get("gram_max_n", SMALL_N) else None
    card_kw = {**card_kw, "_gram": gram}
    dirs: List[torch.Tensor] = [total]
    hi = min(cap, max_removed_upper_bound(S, eps, dirs, _trusted=True))
    lo = 0
    best: Optional[PruningSolution] = None
    steps = 0
    proven = False
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
    ub = min(cap, max_removed_upper_bound(S, eps, dirs, _trusted=True))
    if proven:
        ub = int(removed.size)
    relax_steps = 0
    if removed.size + 1 <= min(ub, n - 1):
        bdeadline = time.perf_counter() + max(1.0, 0.25 * time_limit)
        if gram is not None:
            # exact relaxations: a few interior-point solves' worth at least (~1 s at n = 1,000, 8 s at 2,000)
            bdeadline = max(bdeadline, time.perf_counter() + 1e-9 * n ** 3)
            ub, relax_steps = _small_max_removed_bound(S, gram, eps, removed, ub, bdeadline, dirs)
        else:
            u_rel, _, _, _ = _relaxation_directions(S, removed.size + 1, None, None, iters=40, deadline=bdeadline)
            if u_rel is not None:
                dirs.append(u_rel)
            ub = min(ub, max_removed_upper_bound(S, eps, dirs, _trusted=True))
    lb = cardinality_lower_bound(S, int(removed.size), dirs, _trusted=True) if 1 <= removed.size <= n - 1 else 0.0
    status = "optimal" if removed.size >= ub else "feasible"
    r = torch.linalg.vector_norm(S, dim=1).to(torch.float64) ** 2
    degenerate = _degeneracy(S, total, r, lb, objective, eps=eps)
    sol = PruningSolution(removed=removed, n=n, problem="generalization", objective=objective, lower_bound=lb,
                          status=status, time=time.perf_counter() - t0, solver="fast", eps=eps,
                          max_removed_bound=int(ub), degenerate=degenerate,
                          info={"search_steps": steps, "relaxation_solves": relax_steps})
    logger.info("%r", sol)
    return sol


# --------------------------------------------------------------------------- exact MIP (cvxpy)
_TIME_PARAMS = {
    "SCIP": lambda t: {"scip_params": {"limits/time": float(t)}},
    "CPLEX": lambda t: {"cplex_params": {"timelimit": float(t)}},
    "GUROBI": lambda t: {"TimeLimit": float(t)},
    "MOSEK": lambda t: {"mosek_params": {"MSK_DPAR_OPTIMIZER_MAX_TIME": float(t)}},
    "XPRESS": lambda t: {"maxtime": int(math.ceil(t))},
}


def solve_exact(S: ArrayLike, *, m: Optional[int] = None, eps: Optional[float] = None, solver: str = "SCIP",
                time_limit: float = 60.0, verbose: bool = False,
                max_removed: Optional[int] = None) -> PruningSolution:
    """The mixed-integer program of the paper through cvxpy (one of ``m`` / ``eps``).

    With ``eps``, at most ``max_removed`` samples are removed (default ``n - 1``: at least one is
    kept, as on the fast path; the keep-ratio floor of a selection).

    Uses ``||R w||`` with ``S^T = Q R`` (``min(n, d)`` rows, same values). ``status`` is
    ``"optimal"`` when the solver proved optimality, ``"time_limit"`` when it stopped with an
    incumbent, and a :class:`PruneDataError` is raised when it found no solution at all.
    ``lower_bound`` is the solver's dual bound where it reports one (SCIP), else the objective if
    optimal, else 0.
    """
    from .._optional import require

    cp = require("cvxpy", extra="solvers", purpose="the exact MIP solver (method='exact')")
    t0 = time.perf_counter()
    S = _as_matrix(S)
    n, d = S.shape
    if (m is None) == (eps is None):
        raise PruneDataError("give exactly one of m (remove m samples) or eps (largest eps-redundant set)")
    if m is not None:
        m = _check_m(m, n)
        if max_removed is not None:
            raise PruneDataError("max_removed caps the generalisation problem (eps=); with m= the count is fixed")
    else:
        eps = _check_eps(eps)
        cap = n - 1 if max_removed is None else _check_m(max_removed, n)
    if solver not in cp.installed_solvers():
        raise PruneDataError(
            f"cvxpy solver {solver!r} is not installed (installed: {', '.join(cp.installed_solvers())}); "
            "pip install pyscipopt for SCIP"
        )
    if not (time_limit > 0):
        raise PruneDataError(f"time_limit must be positive seconds, got {time_limit}")
    A = S.detach().cpu().to(torch.float64).numpy()
    R = np.linalg.qr(A.T, mode="r")  # (min(n,d), n), ||A^T w|| = ||R w||
    w = cp.Variable(n, boolean=True)
    if m is not None:
        prob = cp.Problem(cp.Minimize(cp.norm(R @ w, 2)), [cp.sum(w) == m])
    else:
        prob = cp.Problem(cp.Maximize(cp.sum(w)), [cp.norm(R @ w, 2) <= eps, cp.sum(w) <= cap])
    kw = _TIME_PARAMS.get(solver, lambda t: {})(time_limit)
    if solver not in _TIME_PARAMS:
        logger.warning("no time limit known for cvxpy solver %s; it may run long", solver)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            prob.solve(solver=solver, verbose=verbose, **kw)
        except cp.error.SolverError as e:
            raise PruneDataError(f"{solver} failed on the pruning MIP ({e}); try the fast solver (method='fast')") from e
    wv = w.value
    if wv is None or prob.status in ("infeasible", "unbounded", "infeasible_inaccurate"):
        raise PruneDataError(
            f"{solver} found no solution within {time_limit:g}s (status {prob.status}); raise time_limit or "
            "use method='fast'"
        )
    removed = np.flatnonzero(wv > 0.5)
    v = A[removed].sum(0) if removed.size else np.zeros(d)
    objective = float(np.linalg.norm(v))
    stats = prob.solver_stats
    extra = getattr(stats, "extra_stats", None) or {}
    raw = extra.get("scip_status") if isinstance(extra, dict) else None
    proven = (raw == "optimal") if raw is not None else (prob.status == "optimal")
    status = "optimal" if proven else "time_limit"
    lb = objective if (proven and m is not None) else 0.0
    ub_count = None
    model = extra.get("model") if isinstance(extra, dict) else None
    if model is not None and not proven:
        try:
            db = float(model.getDualbound())
            if m is not None and math.isfinite(db):
                lb = max(0.0, min(objective, db))
            elif m is None and math.isfinite(db):
                ub_count = min(cap, int(math.floor(abs(db) + 1e-6)))
        except Exception:  # pragma: no cover - solver specific
            pass
    if m is None:
        ub_count = removed.size if proven else ub_count
        if removed.size and removed.size <= n - 1:
            lb = objective if proven else 0.0
    sol = PruningSolution(removed=removed, n=n, problem="cardinality" if m is not None else "generalization",
                          objective=objective, lower_bound=lb, status=status, time=time.perf_counter() - t0,
                          solver=f"exact:{solver}", eps=eps, max_removed_bound=ub_count,
                          info={"cvxpy_status": prob.status, "solver_status": raw, "reduced_rows": int(R.shape[0])})
    logger.info("%r", sol)
    return sol


# --------------------------------------------------------------------------- one call
def solve_pruning(S: ArrayLike, *, remove: Optional[int] = None, keep: Optional[int] = None,
                  eps: Optional[float] = None, method: str = "fast", groups: Optional[Sequence[int]] = None,
                  time_limit: Optional[float] = None, exact_solver: str = "SCIP", seed: int = 0,
                  **fast_kw) -> PruningSolution:
    """Solve either problem with either path.

    Give ``remove`` (or ``keep = n - remove``) for the cardinality problem, or ``eps`` for the
    generalisation problem. ``method``: ``"fast"`` (any n), ``"exact"`` (cvxpy MIP; small n only)
    or ``"auto"`` (exact up to :data:`EXACT_AUTO_MAX_N` rows, fast beyond). ``groups`` (cardinality,
    fast path only) removes from each group in proportion to its size and swaps within groups.
    """
    S = _as_matrix(S)
    n = S.shape[0]
    given = [x is not None for x in (remove, keep, eps)]
    if sum(given) != 1:
        raise PruneDataError("give exactly one of remove=, keep= (cardinality problem) or eps= (generalisation problem)")
    if keep is not None:
        if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or not 1 <= int(keep) <= n - 1:
            raise PruneDataError(f"keep must be an integer in [1, {n - 1}] for n={n} samples; got {keep!r}")
        remove = n - int(keep)
    if method not in ("fast", "exact", "auto"):
        raise PruneDataError(f"method must be 'fast', 'exact' or 'auto', got {method!r}")
    if method == "auto":
        method = "exact" if n <= EXACT_AUTO_MAX_N and groups is None else "fast"
    if method == "exact":
        if groups is not None:
            raise PruneDataError("groups (class-balanced quotas) are supported by the fast solver only; use method='fast'")
        cap = fast_kw.get("max_removed") if eps is not None else None
        return solve_exact(S, m=remove, eps=eps, solver=exact_solver, time_limit=time_limit or 60.0, max_removed=cap)
    if eps is not None:
        if groups is not None:
            raise PruneDataError("groups apply to the cardinality problem (remove=/keep=), not to eps=")
        return solve_generalization_fast(S, eps, time_limit=time_limit, seed=seed, **fast_kw)
    return solve_cardinality_fast(S, remove, groups=groups, time_limit=time_limit, seed=seed, **fast_kw)
