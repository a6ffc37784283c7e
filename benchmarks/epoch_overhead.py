"""Cost of one training epoch three ways, measured in one run (issue 2's speed targets).

1. plain:    DataLoader(dataset)                            -- the baseline
2. pruned:   DataLoader(PrunedDataset(dataset, selection))  -- per-sample time vs plain (target <= 1.02x)
3. adapruner: AdaPruner joint training on the full dataset  -- epoch time vs plain (target <= 1.05x)

Same model, data, batch size and optimiser; the three are interleaved over ``--repeats`` rounds and
the median of each is compared, so machine noise hits all three alike. Prints a table and ratios.

    python benchmarks/epoch_overhead.py            # full 60k Fashion-MNIST, small CNN
    python benchmarks/epoch_overhead.py --quick    # 10k samples, for a smoke run
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from prunedata import AdaPruner, AdaPrunerSampler, IndexedDataset, PrunedDataset, Selection, dataset_fingerprint
from prunedata.datasets import FashionMNIST
from prunedata.models import make_model


def run_plain(model, opt, loader, device):
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def run_adapruner(model, opt, loader, sampler, device):
    for idx, (x, y) in loader:
        x, y = x.to(device), y.to(device)
        loss = sampler.pruner.loss(idx, F.cross_entropy(model(x), y, reduction="none"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sampler.pruner.step()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--max-samples", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--keep-ratio", type=float, default=0.7)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None, help="also write the figures here")
    a = ap.parse_args(argv)
    n = a.max_samples or (10_000 if a.quick else None)
    ds = FashionMNIST(train=True, max_samples=n)
    N = len(ds)
    dev = torch.device(a.device)
    rng = np.random.default_rng(0)
    sel = Selection(kept=rng.choice(N, int(a.keep_ratio * N), replace=False), dataset_size=N, method="random",
                    fingerprint=dataset_fingerprint(ds))
    pruned = PrunedDataset(ds, sel)

    torch.manual_seed(0)
    model = make_model(a.model).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    plain_loader = DataLoader(ds, batch_size=a.batch_size, shuffle=True, generator=g, num_workers=a.num_workers)
    pruned_loader = DataLoader(pruned, batch_size=a.batch_size, shuffle=True, generator=g, num_workers=a.num_workers)
    pruner = AdaPruner(N, a.keep_ratio, epochs=3, warmup_epochs=1, device=dev)
    sampler = AdaPrunerSampler(pruner, seed=0)
    # the last pruning epoch: all three loss terms, mask updates, the step-size guard and the per-step
    # hold check are active (the most work AdaPruner does in any step)
    sampler.set_epoch(2)
    ada_loader = DataLoader(IndexedDataset(ds), batch_size=a.batch_size, sampler=sampler, num_workers=a.num_workers)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times = {"plain": [], "pruned": [], "adapruner": []}
    run_plain(model, opt, DataLoader(torch.utils.data.Subset(ds, range(min(N, 4 * a.batch_size))),
                                     batch_size=a.batch_size), dev)  # warm-up (allocator, kernels)
    for r in range(a.repeats):
        for name in ("plain", "pruned", "adapruner"):
            sync()
            t0 = time.perf_counter()
            if name == "plain":
                run_plain(model, opt, plain_loader, dev)
            elif name == "pruned":
                run_plain(model, opt, pruned_loader, dev)
            else:
                run_adapruner(model, opt, ada_loader, sampler, dev)
            sync()
            times[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{a.repeats}: " + "  ".join(f"{k}={v[-1]:.2f}s" for k, v in times.items()),
              file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_sample = {"plain": med["plain"] / N, "pruned": med["pruned"] / len(pruned), "adapruner": med["adapruner"] / N}
    res = {
        "device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(), "samples": N,
        "kept": len(pruned), "batch_size": a.batch_size, "repeats": a.repeats,
        "epoch_seconds_median": med,
        "pruned_per_sample_ratio": per_sample["pruned"] / per_sample["plain"],
        "adapruner_epoch_ratio": med["adapruner"] / med["plain"],
        "pruned_epoch_ratio": med["pruned"] / med["plain"],
    }
    print(f"\nepoch of {a.model} on {N} Fashion-MNIST samples, batch {a.batch_size}, {dev}, median of {a.repeats}")
    print(f"{'loader':<12}{'epoch s':>10}{'us/sample':>12}")
    for k in ("plain", "pruned", "adapruner"):
        print(f"{k:<12}{med[k]:>10.3f}{1e6 * per_sample[k]:>12.2f}")
    print(f"\nPrunedDataset per-sample time / plain : {res['pruned_per_sample_ratio']:.3f}  (target <= 1.02)")
    print(f"AdaPruner epoch time / plain          : {res['adapruner_epoch_ratio']:.3f}  (target <= 1.05)")
    print(f"PrunedDataset epoch time / plain      : {res['pruned_epoch_ratio']:.3f}  (kept {len(pruned) / N:.2f})")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return res


if __name__ == "__main__":
    main()
