"""Cost of the one training loop (``prunedata.loop.train``) against hand-written loops, in one run.

The restructure put every training loop of the library (``fit``, proxies, evaluation, AdaPruner single
process and DDP) behind :func:`prunedata.loop.train` with hooks. This measures what that costs per
epoch, interleaved over ``--repeats`` rounds (medians compared, so machine noise hits all alike):

1. plain-hand:     a hand-written SGD loop                                  -- the baseline
2. plain-loop:     ``loop.train`` with no hooks, same optimiser             -- ratio vs 1 (target <= 1.01)
3. adapruner-hand: a hand-written AdaPruner loop (sampler.loss / step)      -- reference
4. adapruner-loop: ``loop.train`` with AdaPruner's hook (train_adapruner)   -- ratio vs 3 (target <= 1.01)

    python benchmarks/loop_overhead.py --quick     # 10k Fashion-MNIST samples
    python benchmarks/loop_overhead.py             # all 60k
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from prunedata import AdaPruner, AdaPrunerSampler, IndexedDataset
from prunedata.datasets import FashionMNIST
from prunedata.loop import Recipe, train
from prunedata.models import make_model
from prunedata.training import JointTraining, per_sample_ce


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--model", default="cnn")
    a = ap.parse_args(argv)
    ds = FashionMNIST(train=True, max_samples=10_000 if a.quick else None)
    n = len(ds)
    torch.manual_seed(0)
    model = make_model(a.model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    recipe = Recipe(epochs=1, batch_size=a.batch_size, lr=0.01, schedule="constant")
    pruner = AdaPruner(n, 0.7, epochs=3, warmup_epochs=1)
    sampler = AdaPrunerSampler(pruner, seed=0)

    def plain_hand():
        g = torch.Generator().manual_seed(0)
        for x, y in DataLoader(ds, batch_size=a.batch_size, shuffle=True, generator=g):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def plain_loop():
        train(model, ds, recipe, optimizer=opt, show_progress=False)

    def ada_hand():
        sampler.set_epoch(2)
        for idx, (x, y) in DataLoader(IndexedDataset(ds), batch_size=a.batch_size, sampler=sampler):
            loss = sampler.pruner.loss(idx, F.cross_entropy(model(x), y, reduction="none"))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sampler.pruner.step()

    class _LastPruningEpoch(JointTraining):
        def before_epoch(self, epoch):
            super().before_epoch(2)

        def after_epoch(self, epoch, model):
            pass

    def ada_loop():
        train(model, ds, recipe, hooks=[_LastPruningEpoch(sampler, per_sample_ce)], with_ids=True, optimizer=opt,
              sampler=sampler, show_progress=False)

    runs = {"plain-hand": plain_hand, "plain-loop": plain_loop, "adapruner-hand": ada_hand, "adapruner-loop": ada_loop}
    times = {k: [] for k in runs}
    for r in range(a.repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{a.repeats}: " + "  ".join(f"{k}={v[-1]:.2f}s" for k, v in times.items()),
              file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nepoch of {a.model} on {n} Fashion-MNIST samples, batch {a.batch_size}, {torch.get_num_threads()} "
          f"threads, median of {a.repeats}")
    for k, v in med.items():
        print(f"{k:<16}{v:>8.3f} s")
    print(f"\nloop.train / hand-written plain loop      : {med['plain-loop'] / med['plain-hand']:.3f}  (target <= 1.01)")
    print(f"loop.train + AdaPruner hook / hand-written : {med['adapruner-loop'] / med['adapruner-hand']:.3f}  "
          "(target <= 1.01)")
    return med


if __name__ == "__main__":
    main()
