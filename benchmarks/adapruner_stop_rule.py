"""AdaPruner's stop rule and count on a small problem (issue 14): does a sample's fate depend on
where it falls in an epoch's shuffle, is the count exact, does the mask follow the paper's signal?

A 4-class Gaussian problem (8 features), an MLP trained jointly with the mask by
``prunedata.training.train_adapruner`` (batch 64, 2 warm-up + 4 pruning epochs), several seeds.
For every pruning epoch it prints the kept fraction of the samples in the first and the last third
of that epoch's shuffle (AdaPrunerSampler's order), the kept count, the count rule, the Spearman
correlation between the final logits and the paper's per-sample signal ``L - log L`` of the final
model, and how many distinct scores the selection file gets.

    python benchmarks/adapruner_stop_rule.py                      # N = 3000, keep 0.7 and 0.98, 3 seeds
    python benchmarks/adapruner_stop_rule.py --n 20000 --keep 0.98 --seeds 1
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import TensorDataset

from prunedata import AdaPruner
from prunedata.training import per_sample_losses, train_adapruner


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def run(n: int, keep: float, seed: int, epochs: int, warmup: int, binarize: str):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(4, 8, generator=g) * 1.5
    y = torch.randint(0, 4, (n,), generator=g)
    ds = TensorDataset(mu[y] + torch.randn(n, 8, generator=g), y)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    p = AdaPruner(n, keep, epochs=epochs, warmup_epochs=warmup, binarize=binarize, seed=seed)
    t0 = time.perf_counter()
    train_adapruner(model, ds, p, batch_size=64, lr=0.05, seed=seed, show_progress=False)
    secs = time.perf_counter() - t0
    sel = p.selection()
    keep_mask = sel.mask
    gaps = []
    for e in range(warmup, epochs):
        gen = torch.Generator()
        gen.manual_seed(seed + e)  # AdaPrunerSampler's order of epoch e
        pos = np.empty(n)
        pos[torch.randperm(n, generator=gen).numpy()] = np.arange(n) / n
        gaps.append((keep_mask[pos < 1 / 3].mean(), keep_mask[pos >= 2 / 3].mean()))
    losses = per_sample_losses(model, ds)
    rho = spearman(sel.scores, losses - np.log(np.maximum(losses, 1e-6)))
    return sel, gaps, rho, secs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--keep", type=float, nargs="+", default=[0.7, 0.98])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--binarize", default="exact")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    for keep in a.keep:
        print(f"keep {keep}, N = {a.n}, binarize={a.binarize!r}")
        worst = 0.0
        for seed in range(a.seeds):
            sel, gaps, rho, secs = run(a.n, keep, seed, a.epochs, a.warmup, a.binarize)
            worst = max([worst] + [abs(l - f) for f, l in gaps])
            ep = "  ".join(f"e{a.warmup + i}: {f:.3f}/{l:.3f}" for i, (f, l) in enumerate(gaps))
            print(f"  seed {seed}: kept {sel.num_kept} ({sel.params['count_rule']}), spearman(logit, L - log L) "
                  f"{rho:+.3f}, distinct scores {len(np.unique(sel.scores))}/{a.n}, {secs:.1f} s")
            print(f"    kept fraction, first/last third of each pruning epoch's shuffle: {ep}")
        print(f"  largest |last third - first third| over seeds and pruning epochs: {worst:.3f}")


if __name__ == "__main__":
    main()
