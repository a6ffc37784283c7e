"""Solvers of the influence-pruning selection problem (Yang et al. 2023): remove ``m`` rows of ``S``
so that the norm of the sum of the removed rows is smallest (cardinality-guaranteed), or as many rows
as possible with that norm at most ``eps`` (generalisation-guaranteed), each with a certified bound.

Modules: :mod:`.problem` (input checks, the result type), :mod:`.bounds` (dual bounds and the
relaxations that give them), :mod:`.search` (large-n local search), :mod:`.small` and :mod:`.tabu`
(the Gram-matrix path for small n: exhaustive, relaxation + local search, batched tabu chains), :mod:`.generalization` (the eps problem),
:mod:`.exact` (the MIP through cvxpy) and :mod:`.dispatch` (:func:`solve_pruning`)."""
from __future__ import annotations

from .problem import PruningSolution, group_quota
from .bounds import _proj_capped_simplex_np, cardinality_lower_bound, ipm_relaxation, max_removed_upper_bound  # noqa: F401
from .search import solve_cardinality_fast
from .generalization import solve_generalization_fast
from .exact import solve_exact
from .dispatch import solve_pruning

# the names before the split (the tests reach these internals)
_group_quota = group_quota
_ipm_relaxation = ipm_relaxation

__all__ = ['PruningSolution', 'solve_pruning', 'solve_cardinality_fast', 'solve_generalization_fast', 'solve_exact', 'cardinality_lower_bound', 'max_removed_upper_bound']

