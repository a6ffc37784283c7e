"""Certified bounds: the dual bound from directions, the max-removed bound of the eps problem, and the
relaxations whose solutions are the best directions (projected gradient, active set, interior point).

Every direction gives a valid bound, so the relaxations' points (``u = S^T w``) are used whatever
their accuracy: an early stop, a cycling active set or an inexact interior point costs tightness only."""
from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from .problem import ArrayLike, as_matrix, check_eps, check_groups, check_m, group_quota


def _m_smallest_sum(x: torch.Tensor, m: int) -> float:
    return 0.0 if m <= 0 else float(torch.topk(x, m, largest=False, sorted=False).values.double().sum())


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
    S = S if _trusted else as_matrix(S)
    n = S.shape[0]
    m = check_m(m, n)
    gi, quota = group_index(check_groups(groups, n), m, S.device)
    return max([0.0] + [_phi(Su, m, gi, quota) for Su in _directions_matvec64(S, directions)])


def max_removed_upper_bound(S: ArrayLike, eps: float, directions: Sequence[ArrayLike], *, _trusted: bool = False) -> int:
    """Certified upper bound on the size of the largest set with ``||sum S_i|| <= eps``: for each unit
    ``u`` the cumulative sums of sorted ``S u`` rise above ``eps`` at some size no set can reach."""
    S = S if _trusted else as_matrix(S)
    eps = check_eps(eps)
    ub = S.shape[0]
    for Su in _directions_matvec64(S, directions):
        c = torch.cumsum(torch.sort(Su).values, 0)
        over = torch.nonzero(c > eps * (1 + 1e-12) + 1e-300)
        if over.numel():
            ub = min(ub, int(over[0]))  # sizes >= first index+1 are infeasible
    return ub


def group_index(groups: Optional[np.ndarray], m: int, device) -> tuple:
    if groups is None:
        return None, None
    q = group_quota(groups, m)
    gi = [torch.as_tensor(np.flatnonzero(groups == lab), device=device) for lab in q]
    return gi, [q[lab] for lab in q]


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


def relaxation_directions(S: torch.Tensor, m: int, gi, quota, *, iters: int, deadline: float,
                           x0: Optional[torch.Tensor] = None) -> tuple:
    """Accelerated projected gradient on min 1/2||S^T w||^2 over the (grouped) capped simplex.

    Returns (best direction u found, its bound, number of iterations, last point w). Each gradient
    ``S S^T y`` gives a bound for free: ``u = S^T y / ||S^T y||``.
    """
    n = S.shape[0]
    dt = S.dtype
    gl = gi if gi is not None else [torch.arange(n, device=S.device)]
    ql = quota if quota is not None else [m]

    def proj(z):
        out = torch.empty_like(z)
        for ix, q in zip(gl, ql):
            out[ix] = _proj_capped_simplex(z[ix], q)
        return out

    if x0 is None:                 # the uniform point: each group's quota spread over its rows
        w = torch.empty(n, dtype=dt, device=S.device)
        for ix, q in zip(gl, ql):
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


def proj_capped_simplex_np(z: np.ndarray, q: float) -> np.ndarray:
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


def fista_relaxation(G: np.ndarray, gl: List[np.ndarray], ql: List[int], deadline: float,
                      iters: int = 300) -> tuple:
    """Accelerated projected gradient (FISTA) on ``min w^T G w`` over the (grouped) capped simplex,
    from the uniform point; at most ``iters`` steps of one ``G y`` product each, or until ``deadline``.
    Returns ``(w, steps)``: a fractional point, used to start the search (randomised rounding) and
    as a direction of the bound."""
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
            out[ix] = proj_capped_simplex_np(z[ix], q)
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


def pdas_relaxation(G: np.ndarray, gl: List[np.ndarray], ql: List[int], w0: np.ndarray, deadline: float,
                     max_iter: int = 40) -> tuple:
    """Exact solve of the relaxation ``min w^T G w, 0 <= w <= 1, sum_{i in g} w_i = q_g`` by the
    primal-dual active-set method (Hintermueller, Ito & Kunisch 2003), warm-started at ``w0``.

    Each step guesses which weights sit at 0, at 1 or in between from the previous iterate
    (``z = G w + mu``: at 0 if ``z > c w``, at 1 if ``z < c (w - 1)``), then solves the KKT system of
    the free weights (one multiplier per group) exactly. A repeated guess is a KKT point, i.e. the
    relaxation's optimum; the final solve gets one step of iterative refinement (the Gram matrix of
    tiny, nearly cancelling rows is ill-conditioned). Returns ``(w, converged)``; ``w`` is ``None``
    if no step could be taken. The method can cycle on larger ill-conditioned problems (a repeated
    earlier guess ends it): the caller falls back to :func:`ipm_relaxation` then.
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


def small_bound(G: np.ndarray, m: int, groups_idx: Optional[List[np.ndarray]], quota: Optional[List[int]],
                 w_found: np.ndarray, iters: int, deadline: float = math.inf,
                 info: Optional[Dict[str, Any]] = None) -> float:
    """Dual bound in the n-space of the Gram matrix: for w with v = S^T w, S u = G w / ||v||.

    Evaluates the directions of the found set and of the total; with ``iters > 0`` it then solves
    the relaxation ``min ||S^T w||, w in the (grouped) capped simplex``: first by the primal-dual
    active-set method warm-started at the found set (:func:`pdas_relaxation`; a few small linear
    solves, exact -- the bound then equals the relaxation's optimum, the best any bound of this kind
    can give), and if that cycles by the interior-point method (:func:`ipm_relaxation`, at most
    ``iters`` iterations), every iterate of which is a direction. Stops at ``deadline`` (the
    active-set method gets at most half of the time). ``info`` (a dict) receives how the bound was
    obtained and the relaxation's value at the last fractional point.
    """
    n = G.shape[0]
    gl = groups_idx if groups_idx is not None else [np.arange(n)]
    ql = quota if quota is not None else [m]
    info = {} if info is None else info

    def bound_at(w):
        """(the bound of the direction ``S^T w``, ``||S^T w||``); the bound is 0 when ``S^T w = 0``."""
        gw = G @ w
        nv = math.sqrt(max(float(w @ gw), 0.0))
        if not nv > 0:
            return 0.0, nv
        x = gw / nv
        return sum(float(np.partition(x[ix], q - 1)[:q].sum()) if q > 0 else 0.0 for ix, q in zip(gl, ql)), nv

    best = max(0.0, bound_at(w_found)[0], bound_at(np.ones(n))[0])
    if iters <= 0:
        return best
    now = time.perf_counter()
    # the active-set solve gets at most half of the time left; the interior-point method the rest if needed
    w_pd, conv = pdas_relaxation(G, gl, ql, w_found, now + 0.5 * (deadline - now) if math.isfinite(deadline) else deadline)
    info["bound_method"], info["relaxation_value"] = "active-set", None
    if w_pd is not None:
        b, nv = bound_at(w_pd)
        best = max(best, b)
        if conv and nv > 0:
            info["relaxation_value"] = nv
            # at the relaxation's optimum the bound equals its value: nothing left to gain
            if b >= nv * (1 - 1e-9):
                return best
    if time.perf_counter() + 1e-10 * n ** 3 > deadline:
        return best          # not even one interior-point iteration (a Cholesky of n x n) fits
    info["bound_method"] = "interior point"
    for w in ipm_relaxation(G, gl, ql, deadline, max_iter=iters):
        b, nv = bound_at(w)
        best = max(best, b)
        if nv > 0:
            info["relaxation_value"] = nv
    return best


def ipm_relaxation(G: np.ndarray, gl: List[np.ndarray], ql: List[int], deadline: float, max_iter: int = 60,
                    tol: float = 1e-10):
    """Mehrotra predictor-corrector interior-point method for the relaxation
    ``min 1/2 w^T G w, sum_{i in g} w_i = q_g, 0 <= w <= 1``; yields every (feasible, interior)
    iterate, the last one at the optimum to ``tol`` or when ``deadline`` / ``max_iter`` is reached.

    For the problems the active-set method cycles on (hundreds to thousands of rows, nearly
    cancelling, ill-conditioned): 10-20 iterations, each one Cholesky factorisation of
    ``G + diag(lam/w + nu/(1-w))`` (n^3/3 flops)."""
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
