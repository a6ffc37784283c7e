"""The exact MIP through cvxpy (SCIP by default) for small n."""
from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Optional

import numpy as np
import torch

from ...errors import PruneDataError
from .problem import ArrayLike, PruningSolution, as_matrix, check_eps, check_m

logger = logging.getLogger(__name__)


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
    from ..._optional import require

    cp = require("cvxpy", extra="solvers", purpose="the exact MIP solver (method='exact')")
    t0 = time.perf_counter()
    S = as_matrix(S)
    n = S.shape[0]
    if (m is None) == (eps is None):
        raise PruneDataError("give exactly one of m (remove m samples) or eps (largest eps-redundant set)")
    if m is not None:
        m = check_m(m, n)
        if max_removed is not None:
            raise PruneDataError("max_removed caps the generalisation problem (eps=); with m= the count is fixed")
    else:
        eps = check_eps(eps)
        cap = n - 1 if max_removed is None else check_m(max_removed, n)
    if solver not in cp.installed_solvers():
        raise PruneDataError(f"cvxpy solver {solver!r} is not installed (installed: "
                             f"{', '.join(cp.installed_solvers())}); pip install pyscipopt for SCIP")
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            prob.solve(solver=solver, verbose=verbose, **kw)
        except cp.error.SolverError as e:
            raise PruneDataError(f"{solver} failed on the pruning MIP ({e}); try the fast solver (method='fast')") from e
    wv = w.value
    if wv is None or prob.status in ("infeasible", "unbounded", "infeasible_inaccurate"):
        raise PruneDataError(f"{solver} found no solution within {time_limit:g}s (status {prob.status}); "
                             "raise time_limit or use method='fast'")
    removed = np.flatnonzero(wv > 0.5)
    objective = float(np.linalg.norm(A[removed].sum(0)))
    extra = getattr(prob.solver_stats, "extra_stats", None)
    extra = extra if isinstance(extra, dict) else {}
    raw = extra.get("scip_status")
    proven = (raw == "optimal") if raw is not None else (prob.status == "optimal")
    lb = objective if proven and removed.size else 0.0
    ub_count = removed.size if proven and m is None else None
    model = extra.get("model")
    if model is not None and not proven:
        try:
            db = float(model.getDualbound())
            if m is not None and math.isfinite(db):
                lb = max(0.0, min(objective, db))
            elif m is None and math.isfinite(db):
                ub_count = min(cap, int(math.floor(abs(db) + 1e-6)))
        except Exception:  # pragma: no cover - solver specific
            pass
    sol = PruningSolution(removed=removed, n=n, problem="cardinality" if m is not None else "generalization",
                          objective=objective, lower_bound=lb, status="optimal" if proven else "time_limit",
                          time=time.perf_counter() - t0,
                          solver=f"exact:{solver}", eps=eps, max_removed_bound=ub_count,
                          info={"cvxpy_status": prob.status, "solver_status": raw, "reduced_rows": int(R.shape[0])})
    logger.info("%r", sol)
    return sol
