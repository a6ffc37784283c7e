"""A family of n > d selection instances from real Fashion-MNIST, with SCIP references.

Each instance: ``n`` training images drawn at random (seeded) from the 60,000, features = the first
``k`` principal components of their pixels (standardised; the head adds a bias), a softmax head
trained to its optimum of ``mean cross-entropy + lam/2 ||theta||^2`` by damped Newton steps on the
exact Hessian (gradient norm < 1e-10), and ``S_i = (1/n) (H + lam I)^{-1} g_i`` with the exact
Hessian -- the setting of Yang et al. (2023) with ``d = C (k + 1) = 10 (k + 1)`` parameters, here
n > d. The cardinality problem removes ``m`` rows. ``S`` is stored as float32 (npz, one per
instance, under benchmarks/data/solver_family/) with its sha256 in ``manifest.json``; every solver
(SCIP included) runs on exactly the stored float32 values, cast to float64.

The SCIP reference (``scip`` command): the exact MIP of :func:`prunedata.methods.solver.solve_exact`
(cvxpy + SCIP, one thread, 120-s limit) on the stored ``S``: proven optimum, or incumbent + dual
bound, stored in ``<name>.scip.json`` with the removed set, so the objective can be re-checked.

    python benchmarks/make_solver_family.py build          # the npz files + manifest (~1 min)
    nice -n 10 python benchmarks/make_solver_family.py scip [--only NAME ...] [--limit 120]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "solver_family"
LAM = 5e-4

#: (n, k principal components, m removed, seed): d = 10 (k + 1)
FAMILY = [
    (100, 4, 30, 1), (100, 4, 50, 2), (150, 1, 60, 3), (200, 4, 100, 4), (300, 9, 150, 5),
    (400, 4, 200, 6), (600, 19, 240, 7), (1000, 4, 500, 8), (1000, 9, 400, 9), (2000, 9, 1000, 10),
    (120, 1, 60, 11), (200, 9, 100, 12), (250, 4, 75, 13), (500, 9, 250, 14), (800, 4, 320, 15),
    (1500, 19, 600, 16), (1000, 1, 500, 108), (2000, 1, 800, 106),
]


def name_of(n: int, k: int, m: int) -> str:
    return f"n{n}_d{10 * (k + 1)}_m{m}"


def _load_fmnist():
    from prunedata.datasets import FashionMNIST

    ds = FashionMNIST(train=True)
    X = ds.data.numpy().reshape(len(ds), -1).astype(np.float64) / 255.0
    return X, ds.targets.numpy()


def head_at_optimum(h: torch.Tensor, y: torch.Tensor, lam: float, C: int = 10, tol: float = 1e-10,
                    max_iter: int = 100):
    """(W, b, gradient norm, Newton steps) minimising mean CE + lam/2 ||[W|b]||^2 (exact Hessian)."""
    from prunedata.methods.influence import accumulate_hessian, finalize_hessian, per_sample_grads

    F_ = h.shape[1]
    theta = torch.zeros(C, F_ + 1, dtype=torch.float64)

    def loss(th):
        logits = h @ th[:, :F_].T + th[:, F_]
        return float(torch.nn.functional.cross_entropy(logits, y)) + 0.5 * lam * float((th ** 2).sum())

    gn, it = math.inf, 0
    for it in range(1, max_iter + 1):
        W, b = theta[:, :F_], theta[:, F_]
        g = per_sample_grads(h, y, W, b).mean(0) + lam * theta.reshape(-1)
        gn = float(g.norm())
        if gn < tol:
            break
        H = finalize_hessian(accumulate_hessian(h, W, b), lam)
        step = torch.linalg.solve(H, g).reshape(C, F_ + 1)
        f0, t = loss(theta), 1.0
        while loss(theta - t * step) > f0 - 0.25 * t * float(g @ step.reshape(-1)) and t > 1e-8:
            t *= 0.5
        theta = theta - t * step
    return theta[:, :F_].clone(), theta[:, F_].clone(), gn, it


def build_instance(X: np.ndarray, labels: np.ndarray, n: int, k: int, seed: int):
    from prunedata.methods.influence import (ExactSolver, accumulate_hessian, finalize_hessian,
                                             influence_matrix)

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(X.shape[0], n, replace=False))
    P = X[idx] - X[idx].mean(0)
    U, sv, _ = np.linalg.svd(P, full_matrices=False)
    Z = U[:, :k] * sv[:k]
    Z = Z / Z.std(0)
    h = torch.from_numpy(Z)
    y = torch.from_numpy(labels[idx].astype(np.int64))
    W, b, gn, steps = head_at_optimum(h, y, LAM)
    slv = ExactSolver(finalize_hessian(accumulate_hessian(h, W, b), LAM))
    S = influence_matrix(h, y, W, b, slv, n_total=n, out_dtype=torch.float64, show_progress=False)
    return S.numpy().astype(np.float32), idx, gn, steps


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_family(check: bool = True):
    """[(name, S float64 numpy, m, scip dict or None)] in manifest order; verifies the sha256."""
    man = json.loads((DATA / "manifest.json").read_text())
    out = []
    for e in man["instances"]:
        p = DATA / e["file"]
        if check and sha256(p) != e["sha256"]:
            raise SystemExit(f"{p}: sha256 mismatch (rebuild with make_solver_family.py build)")
        z = np.load(p)
        S = z["S"].astype(np.float64)
        sp = DATA / f"{e['name']}.scip.json"
        scip = json.loads(sp.read_text()) if sp.exists() else None
        out.append((e["name"], S, int(e["m"]), scip))
    return out


def cmd_build(args):
    sys.path.insert(0, str(HERE.parent))
    X, labels = _load_fmnist()
    DATA.mkdir(parents=True, exist_ok=True)
    entries = []
    for n, k, m, seed in FAMILY:
        t = time.perf_counter()
        S, idx, gn, steps = build_instance(X, labels, n, k, seed)
        name = name_of(n, k, m)
        p = DATA / f"{name}.npz"
        if p.exists() and np.array_equal(np.load(p)["S"], S):
            pass                                   # same data: keep the file (zip timestamps differ)
        else:
            np.savez_compressed(p, S=S, indices=idx.astype(np.int32))
        entries.append(dict(name=name, file=p.name, n=n, d=S.shape[1], m=m, pcs=k, seed=seed, lam=LAM,
                            grad_norm_at_optimum=gn, newton_steps=steps, sha256=sha256(p)))
        print(f"{name}: |grad| at optimum {gn:.2e} after {steps} Newton steps, {p.stat().st_size / 1e3:.0f} kB, "
              f"{time.perf_counter() - t:.1f}s", flush=True)
    (DATA / "manifest.json").write_text(json.dumps({
        "description": "n > d cardinality instances: Fashion-MNIST train images, k PCA components of the "
                       "pixels + bias, softmax head at the optimum of mean CE + lam/2||theta||^2 (Newton, "
                       "exact Hessian), S = (1/n)(H + lam I)^-1 g_i, stored float32; see make_solver_family.py",
        "instances": entries}, indent=1) + "\n")


def cmd_scip(args):
    from prunedata.methods.solver import solve_exact

    fam = load_family()
    for name, S, m, old in fam:
        if args.only and name not in args.only:
            continue
        if old is not None and not args.force:
            print(f"{name}: reference exists, skipped (--force to redo)")
            continue
        t = time.perf_counter()
        ex = solve_exact(S, m=m, time_limit=args.limit)
        wall = time.perf_counter() - t
        rec = dict(name=name, m=m, status=ex.status, objective=ex.objective, dual_bound=ex.lower_bound,
                   seconds=ex.time, wall=wall, limit=args.limit, solver_status=ex.info.get("solver_status"),
                   removed=[int(i) for i in ex.removed])
        (DATA / f"{name}.scip.json").write_text(json.dumps(rec) + "\n")
        print(f"{name}: SCIP {ex.status} {ex.objective:.6g} (bound {ex.lower_bound:.6g}) in {ex.time:.1f}s", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build")
    sp = sub.add_parser("scip")
    sp.add_argument("--only", nargs="*")
    sp.add_argument("--limit", type=float, default=120.0)
    sp.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    {"build": cmd_build, "scip": cmd_scip}[args.cmd](args)


if __name__ == "__main__":
    main()
