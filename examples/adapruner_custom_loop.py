"""AdaPruner in your own training loop, then training on the pruned set.

The three pieces a loop needs: ``IndexedDataset`` (ids travel with the batch), ``AdaPrunerSampler``
(plugs into the DataLoader you already have, supplies the per-sample weights) and the selection
file. Run:

    python examples/adapruner_custom_loop.py --max-samples 6000 --epochs 4 --out runs/example
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from prunedata import AdaPruner, AdaPrunerSampler, IndexedDataset, PrunedDataset, Selection, save_checkpoint
from prunedata.datasets import FashionMNIST
from prunedata.models import make_model
from prunedata.training import evaluate, fit

log = logging.getLogger("example")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-samples", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--keep-ratio", type=float, default=0.7)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--out", default="runs/example")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(a.out)
    train = FashionMNIST(train=True, max_samples=a.max_samples)
    test = FashionMNIST(train=False, max_samples=2000)

    # --- 1. joint training: model + per-sample mask ------------------------------------------
    torch.manual_seed(0)
    model = make_model("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    pruner = AdaPruner(len(train), keep_ratio=a.keep_ratio, epochs=a.epochs, warmup_epochs=1)
    sampler = AdaPrunerSampler(pruner, seed=0)
    loader = DataLoader(IndexedDataset(train), batch_size=128, sampler=sampler, num_workers=a.num_workers)
    for epoch in range(pruner.epochs):
        sampler.set_epoch(epoch)
        for idx, (x, y) in loader:
            per_sample = F.cross_entropy(model(x), y, reduction="none")  # unreduced!
            loss = pruner.loss(idx, per_sample)  # weighted task loss + selection + compression
            opt.zero_grad()
            loss.backward()
            opt.step()
            pruner.step()  # updates the mask (no-op during warm-up)
        rec = pruner.end_epoch()
        log.info("epoch %d: kept(m>0)=%.3f alpha=%.2f", epoch, rec["keep_ratio_threshold"], rec["alpha"])
        save_checkpoint(out / "checkpoint.pt", epoch=epoch + 1, model=model, optimizer=opt, sampler=sampler)

    selection = pruner.selection(train)
    path = selection.save(out / "selection.json")
    log.info("kept %d of %d (%.1f%%) -> %s", selection.num_kept, len(train), 100 * selection.keep_ratio, path)

    # --- 2. any later run: train a fresh model on the pruned set ------------------------------
    pruned = PrunedDataset(train, Selection.load(path, train))  # refuses another dataset
    fresh = fit(make_model("cnn"), pruned, epochs=2, seed=1, show_progress=False)
    acc = evaluate(fresh, test)["accuracy"]
    log.info("fresh model on %d pruned samples: test accuracy %.4f", len(pruned), acc)
    return selection, acc


if __name__ == "__main__":
    main()
