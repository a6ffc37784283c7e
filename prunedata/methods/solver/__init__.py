"""Solvers of the influence-pruning selection problem (Yang et al. 2023): remove ``m`` rows of ``S``
so that the norm of the sum of the removed rows is smallest (cardinality-guaranteed), or as many rows
as possible with that norm at most ``eps`` (generalisation-guaranteed), each with a certified bound.

Modules: :mod:`.problem` (input checks, the result type), :mod:`.bounds` (dual bounds and the
relaxations that give them), :mod:`.search` (large-n local search), :mod:`.small` (the Gram-matrix
path for small n: exhaustive, relaxation + local search, batched tabu chains), :mod:`.generalization`
(the eps problem) and :mod:`.exact` (the MIP through cvxpy); :func:`solve_pruning` (here) picks
among them."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ...errors import PruneDataError
from .problem import ArrayLike, EXACT_AUTO_MAX_N, PruningSolution, as_matrix
from .bounds import cardinality_lower_bound, max_removed_upper_bound
# internals the tests reach, under their names before the split
from .problem import group_quota as _group_quota  # noqa: F401
from .bounds import ipm_relaxation as _ipm_relaxation, proj_capped_simplex_np as _proj_capped_simplex_np  # noqa: F401
from .search import solve_cardinality_fast
from .generalization import solve_generalization_fast
from .exact import solve_exact

__all__ = ["PruningSolution", "solve_pruning", "solve_cardinality_fast", "solve_generalization_fast", "solve_exact",
           "cardinality_lower_bound", "max_removed_upper_bound"]


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
    S = as_matrix(S)
    n = S.shape[0]
    if sum(x is not None for x in (remove, keep, eps)) != 1:
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
