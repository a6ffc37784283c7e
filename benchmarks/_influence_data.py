"""Shared by the influence benchmarks: a proxy trained on real Fashion-MNIST, cached by its settings.

The trained weights and the measured seconds per training epoch are cached under
``$PRUNEDATA_BENCH_CACHE`` (default ``~/.cache/prunedata/bench``) so the benchmarks can be re-run
without retraining; delete the folder to retrain.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from prunedata.datasets import FashionMNIST
from prunedata.models import make_model
from prunedata.training import fit

CACHE = Path(os.environ.get("PRUNEDATA_BENCH_CACHE", Path.home() / ".cache" / "prunedata" / "bench"))


def trained_proxy(n: int, *, model: str = "cnn", epochs: int = 2, seed: int = 0, lr: float = 0.05,
                  batch_size: int = 128, model_kw: dict | None = None):
    """(model, train dataset, seconds per epoch) for a proxy trained on the first n samples."""
    model_kw = model_kw or {}
    ds = FashionMNIST(train=True, max_samples=None if n >= 60000 else n)
    tag = f"{model}-{json.dumps(model_kw, sort_keys=True)}-n{len(ds)}-e{epochs}-s{seed}-lr{lr}-b{batch_size}"
    tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in tag)
    torch.manual_seed(seed)
    net = make_model(model, **model_kw)
    path = CACHE / f"{tag}.pt"
    if path.exists():
        blob = torch.load(path, weights_only=False)
        net.load_state_dict(blob["state"])
        return net, ds, blob["epoch_seconds"]
    t = time.perf_counter()
    fit(net, ds, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, desc=f"train {model}")
    per_epoch = (time.perf_counter() - t) / epochs
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state": net.state_dict(), "epoch_seconds": per_epoch}, tmp)
    os.replace(tmp, path)
    return net, ds, per_epoch
