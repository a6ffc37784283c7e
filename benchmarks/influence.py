"""Influence stage benchmark: features -> per-sample gradients -> Hessian solve -> S on Fashion-MNIST,
against one training epoch of the model that produced it; and the error of the approximate solves.

    python benchmarks/influence.py           # all 60,000 training images, cnn (d = 10*129 = 1,290)
    python benchmarks/influence.py --quick   # first 10,000 images

Prints: seconds per stage, the ratio (influence stage) / (one training epoch, measured in the same
run), and for K-FAC (EK-FAC) and CG against the exact Cholesky solve: row cosine, relative error of
S, and the exact objective of a selection optimised on the K-FAC S versus one optimised on the exact S.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _influence_data import trained_proxy  # noqa: E402

from prunedata.methods.influence import (accumulate_kfac, cg_solve, collect_features, compute_influence,  # noqa: E402
                                         KFACSolver, per_sample_grads)
from prunedata.methods.solver import solve_pruning  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--cg-iters", type=int, default=300)
    ap.add_argument("--pcg", action="store_true", help="also run EK-FAC-preconditioned CG")
    ap.add_argument("--cached-epoch", action="store_true",
                    help="use the epoch time cached with the proxy instead of timing one epoch in this run")
    args = ap.parse_args(argv)
    n = 10000 if args.quick else 60000
    print(f"torch threads: {torch.get_num_threads()}, cores: {os.cpu_count()}")
    net, ds, epoch_s = trained_proxy(n, epochs=args.epochs)
    print(f"cnn trained on {len(ds)} Fashion-MNIST images: {epoch_s:.1f} s per epoch (measured, cached)")

    # --- the influence stage, timed end to end
    t0 = time.perf_counter()
    feats = collect_features(net, ds, batch_size=1024, show_progress=False)
    t_feat = time.perf_counter() - t0
    inf = compute_influence(net, features=feats, solver="exact", show_progress=False)
    total = t_feat + inf.timings["hessian"] + inf.timings["solve"]
    print(f"\n== influence stage, n={len(ds)}, d={inf.dim} (head {inf.layer_name}), exact Cholesky solve")
    print(f"  features {t_feat:.1f}s | Hessian (block GEMMs) {inf.timings['hessian']:.1f}s | "
          f"grads + H^-1 g for all rows {inf.timings['solve']:.1f}s | total {total:.1f}s")
    if not args.cached_epoch:
        import copy

        from prunedata.training import fit
        t = time.perf_counter()
        fit(copy.deepcopy(net), ds, epochs=1, batch_size=128, lr=0.01, seed=1, show_progress=False)
        epoch_s = time.perf_counter() - t
        print(f"  one training epoch of the same cnn, measured now: {epoch_s:.1f}s")
    print(f"  influence stage / one training epoch = {total / epoch_s:.2f} (target <= 1)")

    # --- approximations against the exact solve
    S = inf.S.double()
    W, b = inf.W, inf.b
    t = time.perf_counter()
    ks = accumulate_kfac(feats.h, W, b)
    kf = KFACSolver(ks, inf.damping, h=feats.h, W=W, b=b)
    t_kf_fac = time.perf_counter() - t
    t = time.perf_counter()
    Sk = torch.empty_like(S)
    for s in range(0, len(ds), 8192):
        G = per_sample_grads(feats.h[s:s + 8192], feats.y[s:s + 8192], W, b)
        Sk[s:s + 8192] = kf.solve(G) / len(ds)
    t_kf = time.perf_counter() - t
    cos = F.cosine_similarity(Sk, S, dim=1)
    rel = float((Sk - S).norm() / S.norm())
    kf_plain = KFACSolver(ks, inf.damping, correct=False)
    G = per_sample_grads(feats.h[:4096], feats.y[:4096], W, b)
    Sp = kf_plain.solve(G) / len(ds)
    cos_p = F.cosine_similarity(Sp, S[:4096], dim=1)
    print(f"\n== approximate solves vs exact (same n, d)")
    print(f"  EK-FAC: factors {t_kf_fac:.1f}s + all rows {t_kf:.1f}s; row cosine mean {float(cos.mean()):.4f} "
          f"(min {float(cos.min()):.3f}); relative Frobenius error of S {rel:.3f}")
    print(f"  plain K-FAC (no eigenvalue correction), 4,096 rows: row cosine mean {float(cos_p.mean()):.4f}")
    # CG on the closed-form HVP (what evaluates a selection exactly when d is too large to factor)
    k = 2
    Gk = per_sample_grads(feats.h[:k], feats.y[:k], W, b)
    t = time.perf_counter()
    Sc, info = cg_solve(Gk, feats.h, W, b, inf.damping, tol=1e-6, max_iter=args.cg_iters)
    t_cg = time.perf_counter() - t
    err = float(((Sc / len(ds)) - S[:k]).norm() / S[:k].norm())
    print(f"  CG ({k} vectors at once, tol 1e-6): {info['iterations']} iterations, {t_cg:.1f}s, rel. error {err:.1e}")
    if args.pcg:
        t = time.perf_counter()
        Sc2, info2 = cg_solve(Gk, feats.h, W, b, inf.damping, tol=1e-6, max_iter=args.cg_iters, preconditioner=kf)
        err2 = float(((Sc2 / len(ds)) - S[:k]).norm() / S[:k].norm())
        print(f"  EK-FAC-preconditioned CG: {info2['iterations']} iterations, {time.perf_counter() - t:.1f}s, "
              f"rel. error {err2:.1e}")

    # selections optimised on each S, evaluated on the exact objective
    m = len(ds) // 2
    tl = 10.0 if args.quick else 20.0
    sol_x = solve_pruning(S.float(), remove=m, time_limit=tl, bound_time=5)
    sol_k = solve_pruning(Sk.float(), remove=m, time_limit=tl, bound_time=5)
    on_exact = float(S[torch.as_tensor(sol_k.removed)].sum(0).norm())
    rnd = np.random.default_rng(0).choice(len(ds), m, replace=False)
    print(f"  remove n/2 by the fast solver ({tl:g}s): optimised on exact S -> {sol_x.objective:.4g}; optimised on "
          f"EK-FAC S -> {sol_k.objective:.4g} on its own objective, {on_exact:.4g} on the exact one "
          f"(ratio {on_exact / sol_x.objective:.2f}); random removal {float(S[rnd].sum(0).norm()):.4g}")


if __name__ == "__main__":
    main()
