"""Influence of every training sample on the last linear layer of a classifier (Yang et al., 2023).

The pieces, each usable on its own (and on any subset of sample indices, so work can be split
across processes and the sums all-reduced under ``torch.distributed``):

* :func:`find_linear_layer`, :func:`collect_features` -- the head (named, or the last ``nn.Linear``)
  and its input features ``h``;
* :func:`per_sample_grads` -- closed-form gradients ``g_i = (p_i - e_{y_i}) (x) [h_i, 1]``;
* :func:`accumulate_hessian` / :func:`accumulate_kfac` -- unnormalised batch sums of the exact head
  Hessian / of its Kronecker factors, with their count (add batches or all-reduce them);
* solvers for ``(H + damping I) s = g``: :class:`ExactSolver` (Cholesky, ``d x d`` with
  ``d = C*(F+1)``), :class:`KFACSolver` (eigenvalue-corrected K-FAC, any ``d``) and :func:`cg_solve`
  (CG on the closed-form Hessian-vector product: a selection checked exactly when ``d`` is too large);
* :func:`influence_matrix` -- ``S_i = (1/n) H^{-1} g_i``, the rows :mod:`prunedata.methods.solver`
  balances; :func:`compute_influence` -- all of it in one call.

Parameter layout: the head's parameters are the matrix ``Theta = [W | b]`` of shape ``(C, D)`` with
``D = F + 1`` (``D = F`` without bias), flattened row-major; index ``c * D + j``. ``damping`` plays
the role of the L2 regulariser of training (weight decay): the per-sample gradients exclude it, the
Hessian includes it, which is the influence of removing a sample while the regulariser stays. It
also makes the Hessian invertible (softmax is shift invariant, so the undamped Hessian is singular).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PruneDataError
from ..features import Features, collect_features, find_linear_layer
from ..progress import progress

logger = logging.getLogger(__name__)

__all__ = [
    "find_linear_layer", "Features", "collect_features", "head_params", "head_probs", "per_sample_grads",
    "HessianSum", "accumulate_hessian", "finalize_hessian", "KFACSum", "accumulate_kfac",
    "ExactSolver", "KFACSolver", "hvp", "cg_solve", "influence_matrix", "InfluenceResult",
    "compute_influence", "choose_solver", "refit_head",
]

#: ``solver="auto"`` factors the Hessian exactly up to this many head parameters (d*d*8 bytes: 288 MB)
EXACT_MAX_DIM = 6000


def head_params(layer: nn.Linear, dtype: torch.dtype = torch.float64) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(W, b)`` of the head, detached, in ``dtype`` (``b`` is ``None`` without bias)."""
    if not isinstance(layer, nn.Linear):
        raise PruneDataError(f"expected an nn.Linear head, got {type(layer).__name__}")
    return layer.weight.detach().to(dtype), None if layer.bias is None else layer.bias.detach().to(dtype)


def _aug(h: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    return h if b is None else torch.cat([h, torch.ones(h.shape[0], 1, dtype=h.dtype, device=h.device)], 1)


def head_probs(h: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    logits = h.to(W.dtype) @ W.T
    if b is not None:
        logits = logits + b
    return torch.softmax(logits, dim=1)


def per_sample_grads(h: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    """Closed-form gradients of ``cross_entropy(W h + b, y)`` per sample: ``(n, C*D)``, row-major ``[W | b]``."""
    h = h.to(W.dtype)
    r = head_probs(h, W, b)
    r[torch.arange(r.shape[0], device=r.device), y.to(r.device)] -= 1.0
    x = _aug(h, b)
    return (r[:, :, None] * x[:, None, :]).reshape(h.shape[0], -1)


def refit_head(h: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor], damping: float, *,
               max_iter: int = 500, tol: float = 1e-9) -> Tuple[torch.Tensor, Optional[torch.Tensor], Dict[str, Any]]:
    """The head at the optimum of ``mean_i CE(W h_i + b, y_i) + damping/2 ||[W | b]||^2`` on frozen
    features ``h`` (L-BFGS with strong-Wolfe line search from the given ``W, b``, in ``W``'s dtype).

    Influence functions assume the parameters minimise the training loss; a proxy trained a few
    epochs has a head far from that on its own features. Refitting the (convex) last layer makes
    the sum of the per-sample gradients equal ``-damping * theta`` as the theory needs. Returns
    ``(W, b, info)`` with the gradient norm before and after and the iterations used; the model
    itself is not changed. ``tol``: stop when the gradient's max-norm falls below it.
    """
    _check_damping(damping)
    dt = W.dtype
    h = h.to(dt)
    y = y.to(h.device)
    T = (W if b is None else torch.cat([W, b[:, None]], 1)).detach().clone()
    F_ = W.shape[1]

    def loss_of(Tv):
        logits = h @ Tv[:, :F_].T
        if b is not None:
            logits = logits + Tv[:, F_]
        return F.cross_entropy(logits, y) + 0.5 * damping * (Tv * Tv).sum()

    def grad_norm(Tv):
        Tv = Tv.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_of(Tv), Tv)
        return float(g.norm())

    g0 = grad_norm(T)
    T.requires_grad_(True)
    opt = torch.optim.LBFGS([T], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-15,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_of(T)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    T = T.detach()
    g1 = grad_norm(T)
    iters = int(opt.state[opt._params[0]].get("n_iter", 0))
    info = {"grad_norm_before": g0, "grad_norm_after": g1, "iterations": iters}
    logger.info("refit head to its optimum on frozen features: |grad| %.3g -> %.3g in %d L-BFGS iterations",
                g0, g1, iters)
    return T[:, :F_].contiguous(), (None if b is None else T[:, F_].contiguous()), info


# --------------------------------------------------------------------------- Hessian (exact)
@dataclass
class HessianSum:
    """Unnormalised sum of per-sample head Hessians and how many samples it holds (all-reduce both)."""

    sum: torch.Tensor
    count: int

    def __add__(self, other: "HessianSum") -> "HessianSum":
        return HessianSum(self.sum + other.sum, self.count + other.count)


def accumulate_hessian(h: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor],
                       out: Optional[HessianSum] = None) -> HessianSum:
    """Add ``sum_i (diag p_i - p_i p_i^T) (x) x_i x_i^T`` over the rows of ``h`` to ``out``.

    Computed by block GEMMs (one per class for the diagonal term, one per class row of the upper
    triangle for the outer-product term), so the cost is about ``n d^2`` flops and ``d^2`` memory.
    """
    h = h.to(W.dtype)
    x = _aug(h, b)
    C, D = W.shape[0], x.shape[1]
    d = C * D
    p = head_probs(h, W, b)
    if out is None:
        out = HessianSum(torch.zeros(d, d, dtype=W.dtype, device=W.device), 0)
    H = out.sum
    q = (p[:, :, None] * x[:, None, :]).reshape(x.shape[0], d)  # rows p_i (x) x_i
    for c in range(C):
        sl = slice(c * D, (c + 1) * D)
        # upper triangle of block-row c: -(p_c x)^T (p_c' x) for c' >= c
        H[sl, c * D:] -= q[:, sl].T @ q[:, c * D:]
        H[sl, sl] += (x * p[:, c:c + 1]).T @ x
    out.count += int(x.shape[0])
    return out


def finalize_hessian(hs: HessianSum, damping: float) -> torch.Tensor:
    """Mean Hessian plus ``damping * I`` (symmetrised from the upper block triangle)."""
    if hs.count <= 0:
        raise PruneDataError("the Hessian sum holds no samples")
    _check_damping(damping)
    H = torch.triu(hs.sum)
    H = H + torch.triu(hs.sum, 1).T
    H /= hs.count
    H.diagonal().add_(damping)
    return H


def _check_damping(damping: float) -> None:
    if not (isinstance(damping, (int, float)) and math.isfinite(damping) and damping > 0):
        raise PruneDataError(f"damping must be a positive number (the L2 regulariser / weight decay of training, "
                             f"e.g. 5e-4); got {damping!r}. The head's Hessian is singular without it.")


class ExactSolver:
    """Solves ``(H + damping I) s = g`` by a Cholesky factorisation of the damped mean Hessian."""

    name = "exact"

    def __init__(self, H_damped: torch.Tensor):
        self.L, info = torch.linalg.cholesky_ex(H_damped)
        if int(info) != 0:
            raise PruneDataError("the damped Hessian is not positive definite (Cholesky failed); increase damping")
        self.dim = H_damped.shape[0]

    def solve(self, G: torch.Tensor) -> torch.Tensor:
        """``H^{-1} g`` for each row ``g`` of ``G`` (n, d)."""
        G = G.to(self.L.dtype)
        return torch.cholesky_solve(G.T, self.L).T


# --------------------------------------------------------------------------- K-FAC (approximation)
@dataclass
class KFACSum:
    """Unnormalised Kronecker factors: ``A = sum x x^T`` (D, D), ``B = sum diag p - p p^T`` (C, C)."""

    A: torch.Tensor
    B: torch.Tensor
    count: int


def accumulate_kfac(h: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor],
                    out: Optional[KFACSum] = None) -> KFACSum:
    h = h.to(W.dtype)
    x = _aug(h, b)
    p = head_probs(h, W, b)
    if out is None:
        C, D = W.shape[0], x.shape[1]
        out = KFACSum(torch.zeros(D, D, dtype=W.dtype, device=W.device),
                      torch.zeros(C, C, dtype=W.dtype, device=W.device), 0)
    out.A += x.T @ x
    out.B += torch.diag(p.sum(0)) - p.T @ p
    out.count += int(x.shape[0])
    return out


class KFACSolver:
    """``(H + damping I)^{-1}`` with ``H ~ B (x) A`` in the Kronecker eigenbasis.

    With ``correct=True`` (default, EK-FAC) the eigenvalues are replaced by the exact diagonal of the
    true Hessian in that eigenbasis, computed in one pass over the features: the best diagonal
    approximation in that basis. Cost: O(n d) time and O(D^2 + C^2 + d) memory, any ``d``.
    """

    name = "kfac"

    def __init__(self, ks: KFACSum, damping: float, *, h: Optional[torch.Tensor] = None,
                 W: Optional[torch.Tensor] = None, b: Optional[torch.Tensor] = None, correct: bool = True,
                 batch_size: int = 8192):
        _check_damping(damping)
        n = ks.count
        lamA, UA = torch.linalg.eigh(ks.A / n)
        lamB, UB = torch.linalg.eigh(ks.B / n)
        self.UA, self.UB, self.damping = UA, UB, float(damping)
        if correct:
            if h is None or W is None:
                raise PruneDataError("the eigenvalue-corrected K-FAC needs the features h and head weights W")
            lam = torch.zeros(UB.shape[0], UA.shape[0], dtype=W.dtype, device=W.device)
            for s in range(0, h.shape[0], batch_size):
                hb = h[s:s + batch_size].to(W.dtype)
                p = head_probs(hb, W, b)
                xt = _aug(hb, b) @ UA                        # (B, D)
                pu = p @ UB                                  # (B, C): U_B^T p
                diagA = p @ (UB * UB) - pu * pu              # diag(U_B^T (diag p - p p^T) U_B)
                lam += diagA.T @ (xt * xt)
            self.lam = lam / n
        else:
            self.lam = lamB.clamp_min(0)[:, None] * lamA.clamp_min(0)[None, :]
        self.C, self.D = UB.shape[0], UA.shape[0]
        self.dim = self.C * self.D

    def solve(self, G: torch.Tensor) -> torch.Tensor:
        G = G.to(self.UA.dtype).reshape(-1, self.C, self.D)
        t = (self.UB.T @ G @ self.UA) / (self.lam + self.damping)
        return (self.UB @ t @ self.UA.T).reshape(G.shape[0], -1)


# --------------------------------------------------------------------------- CG on the closed-form HVP
def hvp(V: torch.Tensor, h: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor], damping: float,
        batch_size: int = 16384) -> torch.Tensor:
    """``(H + damping I) v`` for each row ``v`` of ``V`` (k, d), without forming ``H`` (O(n d k))."""
    k, C, n = V.shape[0], W.shape[0], h.shape[0]
    Vm = V.to(W.dtype).reshape(k, C, -1)
    out = torch.zeros_like(Vm)
    for s in range(0, n, batch_size):
        hb = h[s:s + batch_size].to(W.dtype)
        x = _aug(hb, b)
        p = head_probs(hb, W, b)                               # (B, C)
        z = torch.einsum("kcd,bd->kbc", Vm, x)                 # (k, B, C): V x_i
        a = p * z - p * (p * z).sum(-1, keepdim=True)          # (diag p - p p^T) z
        out += torch.einsum("kbc,bd->kcd", a, x)
    return (out / n + damping * Vm).reshape(k, -1)


def cg_solve(Gs: torch.Tensor, h: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor], damping: float, *,
             tol: float = 1e-8, max_iter: int = 500, preconditioner: Any = None) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """Solve ``(H + damping I) s = g`` for each row of ``Gs`` (k, d) by (preconditioned) CG.

    ``preconditioner`` is any object with ``solve(G)`` (e.g. a :class:`KFACSolver`). Returns the
    solutions and ``{"iterations", "rel_residual"}`` (worst row).
    """
    _check_damping(damping)
    Bm = Gs.to(W.dtype)
    X = torch.zeros_like(Bm)
    R = Bm.clone()
    Z = preconditioner.solve(R) if preconditioner is not None else R.clone()
    P = Z.clone()
    rz = (R * Z).sum(1)
    bnorm = Bm.norm(dim=1).clamp_min(1e-300)
    it = 0
    rel = float((R.norm(dim=1) / bnorm).max())
    while it < max_iter and rel > tol:
        AP = hvp(P, h, W, b, damping)
        alpha = rz / (P * AP).sum(1).clamp_min(1e-300)
        X += alpha[:, None] * P
        R -= alpha[:, None] * AP
        it += 1
        rel = float((R.norm(dim=1) / bnorm).max())
        if rel <= tol:
            break
        Z = preconditioner.solve(R) if preconditioner is not None else R
        rz_new = (R * Z).sum(1)
        P = Z + (rz_new / rz.clamp_min(1e-300))[:, None] * P
        rz = rz_new
    return X, {"iterations": it, "rel_residual": rel}


# --------------------------------------------------------------------------- S
def choose_solver(dim: int, solver: str = "auto") -> str:
    if solver not in ("auto", "exact", "kfac"):
        raise PruneDataError(f"solver must be 'auto', 'exact' or 'kfac', got {solver!r}")
    return solver if solver != "auto" else "exact" if dim <= EXACT_MAX_DIM else "kfac"


def influence_matrix(h: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor], solver: Any, *,
                     n_total: int, rows: Optional[np.ndarray] = None, batch_size: int = 8192,
                     out_dtype: torch.dtype = torch.float32, show_progress: bool = True) -> torch.Tensor:
    """Rows ``S_i = (1/n_total) H^{-1} g_i`` for ``rows`` of ``h`` (all by default), as (len(rows), d).

    ``n_total`` is the size of the whole training set (the ``1/n`` of the paper), which need not be
    the number of rows scored here (a shard of a distributed run, or a subset).
    """
    if rows is not None:
        r = torch.as_tensor(np.asarray(rows), dtype=torch.long, device=h.device)
        h, y = h[r], y[r]
    n = h.shape[0]
    d = W.shape[0] * (W.shape[1] + (0 if b is None else 1))
    S = torch.empty(n, d, dtype=out_dtype, device=h.device)
    starts = range(0, n, batch_size)
    for s in progress(starts, desc="influence: H^-1 g", total=len(starts), disable=not show_progress):
        G = per_sample_grads(h[s:s + batch_size], y[s:s + batch_size], W, b)
        S[s:s + batch_size] = (solver.solve(G) / n_total).to(out_dtype)
    return S


@dataclass
class InfluenceResult:
    """Everything the selection needs: ``S`` (n, d) and how it was made.

    ``S[i]`` is the first-order parameter change from removing sample ``features.indices[i]``
    (``theta_{-i} - theta``, Eq. 2 of the paper with the 1/n factor). :meth:`exact_norm` evaluates
    ``||sum_{i in removed} S_i||`` with the exact Hessian (CG when only K-FAC was used to build S).
    """

    S: torch.Tensor
    features: Features
    W: torch.Tensor
    b: Optional[torch.Tensor]
    damping: float
    solver_name: str
    layer_name: str
    timings: Dict[str, float] = field(default_factory=dict)
    solver: Any = None
    #: how the head was obtained (``refit_head``: gradient norms before/after the refit)
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.S.shape[0])

    @property
    def dim(self) -> int:
        return int(self.S.shape[1])

    def exact_norm(self, removed: Sequence[int], *, tol: float = 1e-8, max_iter: int = 500,
                   precondition: bool = False) -> Tuple[float, Dict[str, Any]]:
        """``||(1/n) H^{-1} sum_{removed} g_i||`` with the exact damped Hessian (rows of this result).

        With a K-FAC result this is one CG solve on the closed-form Hessian-vector product
        (``precondition=True`` uses the K-FAC solver as preconditioner; on Fashion-MNIST it needed
        more iterations than plain CG, see benchmarks/influence.py).
        """
        removed = np.asarray(removed, dtype=np.int64)
        if self.solver_name == "exact":
            v = self.S[torch.as_tensor(removed, device=self.S.device)].to(torch.float64).sum(0)
            return float(v.norm()), {"method": "exact"}
        r = torch.as_tensor(removed, dtype=torch.long, device=self.features.h.device)
        g = per_sample_grads(self.features.h[r], self.features.y[r], self.W, self.b).sum(0, keepdim=True)
        s, info = cg_solve(g, self.features.h, self.W, self.b, self.damping, tol=tol, max_iter=max_iter,
                           preconditioner=self.solver if precondition and isinstance(self.solver, KFACSolver) else None)
        return float(s.norm()) / self.n, {**info, "method": "cg"}


def compute_influence(model: nn.Module, dataset: Any = None, *, layer: Union[None, str, nn.Module] = None,
                      features: Optional[Features] = None, damping: float = 5e-4, solver: str = "auto",
                      batch_size: int = 512, device: Union[str, torch.device, None] = None,
                      dtype: torch.dtype = torch.float64, out_dtype: torch.dtype = torch.float32,
                      num_workers: int = 0, show_progress: bool = True, refit: bool = False,
                      refit_iters: int = 500, indices: Optional[Sequence[int]] = None,
                      reduce: Optional[Callable[[torch.Tensor, str], Any]] = None,
                      agree: Optional[Callable[[Callable[[], Any], str], Any]] = None) -> InfluenceResult:
    """Features -> per-sample gradients -> (damped) Hessian solve -> ``S`` for every sample.

    ``refit=True`` first moves the head to the optimum of its regularised training loss on the
    frozen features (:func:`refit_head`, ``damping`` as the L2 weight, at most ``refit_iters``
    L-BFGS iterations), where the influence approximation is derived; the model is not changed.

    ``solver``: ``"exact"`` (Cholesky, needs ``d^2`` memory), ``"kfac"`` (eigenvalue-corrected
    K-FAC, any size) or ``"auto"`` (exact up to :data:`EXACT_MAX_DIM` head parameters ``d = C*(F+1)``).
    The choice is logged and stored in the result (``solver_name``).

    Work shared by several processes (:func:`prunedata.distributed.distributed_influence`):
    ``indices`` scores only those samples of ``dataset`` (their rows of ``S``, still with the ``1/n``
    of the whole dataset); ``reduce(tensor, what)`` sums a tensor over the processes in place, so each
    one solves with the whole dataset's Hessian; ``agree(fn, what)`` runs a step that every process
    must survive (a failure on one is raised on all).
    """
    name, head = find_linear_layer(model, layer)
    _check_damping(damping)
    step = agree or (lambda fn, what: fn())
    t = {}
    t0 = time.perf_counter()
    if features is None:
        if dataset is None:
            raise PruneDataError("pass the training dataset (or precomputed features=)")
        features = step(lambda: collect_features(model, dataset, head, indices=indices, batch_size=batch_size,
                                                 device=device, num_workers=num_workers, show_progress=show_progress,
                                                 desc="influence: features"), "collecting the head features")
    t["features"] = time.perf_counter() - t0
    n = len(dataset) if indices is not None else len(features)
    W, b = head_params(head, dtype)
    W, b = W.to(features.h.device), None if b is None else b.to(features.h.device)
    info: Dict[str, Any] = {"refit": bool(refit)}
    if refit and reduce is not None:
        raise PruneDataError("refit=True is not available for influence computed across processes yet; refit the "
                             "head in one process, or compute influence without refit")
    if refit:
        t0 = time.perf_counter()
        W, b, rinfo = refit_head(features.h, features.y, W, b, damping, max_iter=refit_iters)
        info.update(rinfo)
        t["refit"] = time.perf_counter() - t0
    d = W.shape[0] * (W.shape[1] + (0 if b is None else 1))
    kind = choose_solver(d, solver)
    logger.info("influence: %d samples, head %s with d=%d parameters, %s Hessian solve", len(features), name, d, kind)
    t0 = time.perf_counter()
    hb = 4096
    local = len(features)
    if kind == "exact":
        hs = None
        for s in progress(range(0, local, hb), desc="influence: Hessian", total=math.ceil(local / hb),
                          disable=not show_progress):
            hs = accumulate_hessian(features.h[s:s + hb], W, b, hs)
        if reduce is not None:
            reduce(hs.sum, "all-reduce of the Hessian sum")
            hs.count = n
        slv: Any = step(lambda: ExactSolver(finalize_hessian(hs, damping)), "factoring the Hessian")
    else:
        ks = None
        for s in range(0, local, hb):
            ks = accumulate_kfac(features.h[s:s + hb], W, b, ks)
        if reduce is not None:
            reduce(ks.A, "all-reduce of the K-FAC factor A")
            reduce(ks.B, "all-reduce of the K-FAC factor B")
            ks.count = n
        slv = step(lambda: KFACSolver(ks, damping, h=features.h, W=W, b=b), "building the K-FAC solver")
        if reduce is not None:
            # the eigenvalue correction sums over this process's samples / n (all samples): add the parts
            reduce(slv.lam, "all-reduce of the K-FAC eigenvalue correction")
    t["hessian"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    S = influence_matrix(features.h, features.y, W, b, slv, n_total=n, out_dtype=out_dtype,
                         show_progress=show_progress)
    t["solve"] = time.perf_counter() - t0
    return InfluenceResult(S=S, features=features, W=W, b=b, damping=float(damping), solver_name=kind,
                           layer_name=name, timings=t, solver=slv, info=info)
