"""The problem's inputs and result: checks of S, m, eps and class groups, class quotas, :class:`PruningSolution`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch

from ...errors import PruneDataError

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
        return np.setdiff1d(np.arange(self.n), self.removed)

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
        d.update({k: self.info[k] for k in ("bound_method", "relaxation_value") if self.info.get(k) is not None})
        return d

    def __repr__(self) -> str:
        s = (f"PruningSolution({self.problem}, removed {self.num_removed}/{self.n}, norm {self.objective:.4g}, "
             f"bound {self.lower_bound:.4g}, gap {100 * self.rel_gap:.1f}%, {self.status}, {self.solver}, "
             f"{self.time:.2f}s")
        if self.max_removed_bound is not None:
            s += f", max removable <= {self.max_removed_bound}"
        return s + ")"


def as_matrix(S: ArrayLike) -> torch.Tensor:
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


def check_m(m: Any, n: int) -> int:
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
        raise PruneDataError(f"the number of samples to remove must be an integer, got {m!r}")
    m = int(m)
    if not 1 <= m <= n - 1:
        raise PruneDataError(f"the number of samples to remove must lie in [1, {n - 1}] for n={n} samples; got {m}. "
                             "(keep = n - remove: keeping all or none is not a pruning problem)")
    return m


def check_eps(eps: Any) -> float:
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise PruneDataError(f"eps must be a non-negative number, got {eps!r}") from None
    if not math.isfinite(e) or e < 0:
        raise PruneDataError(f"eps bounds the norm of the parameter change and must be a finite number >= 0; "
                             f"got {eps!r}")
    return e


def check_groups(groups: Optional[Sequence[int]], n: int) -> Optional[np.ndarray]:
    if groups is None:
        return None
    g = np.asarray(groups).reshape(-1)
    if g.size != n:
        raise PruneDataError(f"groups must give one label per row of S ({n}), got {g.size}")
    return g


def group_quota(groups: np.ndarray, m: int) -> Dict[Any, int]:
    """Per-group removal counts proportional to group size (largest remainder), summing to m."""
    labels, counts = np.unique(groups, return_counts=True)
    n = counts.sum()
    exact = counts * m / n
    q = np.floor(exact).astype(int)
    rest = m - q.sum()
    order = np.argsort(-(exact - q), kind="stable")
    q[order[:rest]] += 1
    # every group keeps at least one sample when that is possible at all
    cap = counts - 1 if m <= n - counts.size else counts
    q = np.minimum(q, cap)
    short = m - q.sum()
    for k in order:                 # re-distribute what a cap cut off
        add = min(cap[k] - q[k], short)
        q[k] += add
        short -= add
    assert int(q.sum()) == m, (q, m)
    return {lab: int(c) for lab, c in zip(labels.tolist(), q.tolist())}


def chunked_sum64(S: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    out = torch.zeros(S.shape[1], dtype=torch.float64, device=S.device)
    for s in range(0, S.shape[0], chunk):
        out += S[s:s + chunk].to(torch.float64).sum(0)
    return out


def degeneracy(total: Union[np.ndarray, torch.Tensor], r: Union[np.ndarray, torch.Tensor], lb: float,
               objective: float, eps: Optional[float] = None) -> Dict[str, Any]:
    """Flags for the cases where the certificate says nothing, given the sum of all rows ``total`` and
    the squared row norms ``r``; empty when there are none."""
    flags: Dict[str, Any] = {}
    scale = math.sqrt(float(r.sum()))  # norm of a sum of the rows with random signs
    tn = float(np.linalg.norm(total)) if isinstance(total, np.ndarray) else float(total.norm())
    ratio = tn / scale if scale > 0 else 0.0
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
        flags.update(total_norm=tn, total_to_random_ratio=ratio)
    return flags
