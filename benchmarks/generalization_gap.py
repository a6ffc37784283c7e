"""The paper's Figure 2 check on Fashion-MNIST: empirical test-loss gap after pruning against the
estimate eps/n of Theorem 1, for influence selections and random ones of equal size.

Setting (the one the theorem is about): the penultimate features of a CNN trained on the data are
fixed; the head is the L2-regularised softmax ERM on them (solved to convergence by L-BFGS, float64),
so "retraining after pruning" is exact and cheap. For each removal size m, the influence selection
(cardinality problem, fast solver) and a random one are compared on

* eps/n = ||sum_{removed} S_i|| (Theorem 1's eps is ||sum I_param|| = n * that),
* the actual parameter change ||theta_{-D} - theta|| after retraining on the kept set,
* the empirical test-loss gap L_test(theta_{-D}) - L_test(theta) and the theorem's bound
  eps/n * ||grad L_test(theta)||.

The retrained objective is (1/n) sum_{kept} CE + lambda/2 ||theta||^2 (the influence model: the
regulariser stays, the removed samples' terms vanish).

    python benchmarks/generalization_gap.py --quick   # 10,000 training images, 4 sizes
    python benchmarks/generalization_gap.py           # 60,000 training images, 6 sizes

Writes generalization_gap.png (or --out).
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

from prunedata.datasets import FashionMNIST  # noqa: E402
from prunedata.methods.influence import collect_features, compute_influence  # noqa: E402
from prunedata.methods.solver import solve_pruning  # noqa: E402

LAMBDA = 5e-4


def head_loss(T, h, y, weights=None, n=None, lam=LAMBDA):
    logits = h @ T[:, :-1].T + T[:, -1]
    losses = F.cross_entropy(logits, y, reduction="none")
    n = n or h.shape[0]
    data = (losses if weights is None else losses * weights).sum() / n
    return data + 0.5 * lam * (T * T).sum()


def fit_head(h, y, T0, weights=None, iters=400):
    T = T0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([T], lr=1, max_iter=iters, tolerance_grad=1e-11, tolerance_change=1e-14,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = head_loss(T, h, y, weights, n=h.shape[0])
        loss.backward()
        return loss
    opt.step(closure)
    return T.detach()


def test_loss(T, h, y):
    with torch.no_grad():
        return float(F.cross_entropy(h @ T[:, :-1].T + T[:, -1], y))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="generalization_gap.png")
    args = ap.parse_args(argv)
    n = 10000 if args.quick else 60000
    fracs = [0.1, 0.3, 0.5, 0.7] if args.quick else [0.1, 0.2, 0.3, 0.5, 0.7, 0.9]
    net, ds, _ = trained_proxy(n, epochs=2)
    test = FashionMNIST(train=False)
    t0 = time.perf_counter()
    ftr = collect_features(net, ds, batch_size=1024, show_progress=False)
    fte = collect_features(net, test, batch_size=1024, show_progress=False)
    h, y = ftr.h.double(), ftr.y
    ht, yt = fte.h.double(), fte.y
    head = net.fc
    T0 = torch.cat([head.weight.detach(), head.bias.detach()[:, None]], 1).double()
    T = fit_head(h, y, T0, iters=1000)
    Tg = T.clone().requires_grad_(True)
    grad_norm = float(torch.autograd.grad(head_loss(Tg, h, y), Tg)[0].norm())
    Tt = T.clone().requires_grad_(True)
    test_grad_norm = float(torch.autograd.grad(F.cross_entropy(ht @ Tt[:, :-1].T + Tt[:, -1], yt), Tt)[0].norm())
    base = test_loss(T, ht, yt)
    print(f"head ERM on {n} fixed cnn features: train-gradient norm {grad_norm:.1e} (converged), test loss {base:.4f}, "
          f"||grad L_test|| = {test_grad_norm:.3f}")
    # influence at the converged head
    head.weight.data = T[:, :-1].float()
    head.bias.data = T[:, -1].float()
    inf = compute_influence(net, features=ftr, damping=LAMBDA, solver="exact", show_progress=False)
    S = inf.S
    rng = np.random.default_rng(0)
    rows = []
    print(f"\n{'removed':>8} {'kind':>9} {'eps/n':>10} {'|dtheta|':>10} {'test gap':>11} {'bound':>10}  solver")
    for f in fracs:
        m = int(round(f * n))
        sol = solve_pruning(S, remove=m, time_limit=8.0 if args.quick else 20.0, bound_time=3.0)
        for kind, removed in (("influence", sol.removed), ("random", rng.choice(n, m, replace=False))):
            w = torch.ones(n, dtype=torch.float64)
            w[torch.as_tensor(removed)] = 0
            Tm = fit_head(h, y, T, weights=w)
            est = float(S[torch.as_tensor(removed)].double().sum(0).norm())
            dtheta = float((Tm - T).norm())
            gap = test_loss(Tm, ht, yt) - base
            rows.append((m, kind, est, dtheta, gap))
            print(f"{m:8d} {kind:>9} {est:10.3e} {dtheta:10.3e} {gap:+11.3e} {est * test_grad_norm:10.3e}  "
                  f"{'certified gap %.0f%%' % (100 * sol.rel_gap) if kind == 'influence' else ''}", flush=True)
    est = np.array([r[2] for r in rows])
    dth = np.array([r[3] for r in rows])
    gap = np.array([abs(r[4]) for r in rows])
    kinds = np.array([r[1] for r in rows])
    corr = np.corrcoef(np.log(est), np.log(gap + 1e-12))[0, 1]
    corr_t = np.corrcoef(np.log(est), np.log(dth))[0, 1]
    within = float(np.mean(gap <= est * test_grad_norm * 1.5))
    print(f"\nlog-log correlation: eps/n vs |test gap| {corr:.3f}; eps/n vs actual |dtheta| {corr_t:.3f}")
    print(f"|test gap| <= 1.5 x first-order bound (eps/n * ||grad L_test||) on {100 * within:.0f}% of the runs")
    for f in fracs:
        m = int(round(f * n))
        a = [r for r in rows if r[0] == m]
        ri, rr = a[0], a[1]
        print(f"  remove {m}: random/influence eps/n = {rr[2] / ri[2]:.1f}x, |test gap| ratio {abs(rr[4]) / max(abs(ri[4]), 1e-12):.1f}x")
    print(f"total {time.perf_counter() - t0:.0f}s")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for kind, c in (("influence", "tab:blue"), ("random", "tab:orange")):
        sel = kinds == kind
        ax[0].scatter(est[sel], gap[sel], c=c, label=kind)
        ax[1].scatter(est[sel], dth[sel], c=c, label=kind)
    lo, hi = est.min() / 2, est.max() * 2
    ax[0].plot([lo, hi], [lo * test_grad_norm, hi * test_grad_norm], "k--", lw=1, label="eps/n x ||grad L_test||")
    ax[1].plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    for a, yl in zip(ax, ("|test loss gap|", "||theta_-D - theta|| (retrained)")):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("eps/n = ||sum of removed S_i||")
        a.set_ylabel(yl)
        a.legend(fontsize=8)
    fig.suptitle(f"Fashion-MNIST, cnn features, n={n}: Theorem 1 check (Yang et al. 2023, Fig. 2)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
