"""Cost of running AdaPruner across ranks (gloo, CPU): 1 process vs. 2 processes on the same data.

    python benchmarks/ddp_adapruner.py [--quick]

Prints, for the same global batch and epochs: wall time per epoch in 1 process (batch 2B) and in
2 ranks (batch B each; one torch thread per process in both cases, so 2 ranks use 2 cores), the
agreement of the masks and of the selections, and the time of the per-step all-reduce of the dense mask gradient for
several dataset sizes N (the price of keeping every rank's mask identical). On a machine with few
cores the 2-rank figure is mostly a measure of the overhead, not of the speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _worker(a) -> None:
    import torch.distributed as dist

    from prunedata.datasets import FashionMNIST
    from prunedata import AdaPruner
    from prunedata.distributed import get_rank, init_distributed, train_adapruner_ddp
    from prunedata.models import make_model
    from prunedata.training import seed_everything

    torch.set_num_threads(1)
    init_distributed(init_method=a.init_method, timeout=300)
    rank = get_rank()
    res = {}
    ds = FashionMNIST(train=True, max_samples=a.n)
    seed_everything(0)
    model = make_model(a.model)
    p = AdaPruner(len(ds), 0.7, epochs=a.epochs, warmup_epochs=1, process_group="world")
    t0 = time.perf_counter()
    train_adapruner_ddp(model, ds, p, batch_size=a.batch, seed=0, show_progress=False)
    res["epoch_s"] = (time.perf_counter() - t0) / a.epochs
    res["mask"] = p.mask.detach().tolist()
    res["kept"] = p.selection(ds).kept.tolist()
    for n in (60_000, 1_281_167):  # Fashion-MNIST / CIFAR-ish, ImageNet-1k
        g = torch.randn(n)
        for _ in range(3):
            dist.all_reduce(g)
        reps = 20
        t0 = time.perf_counter()
        for _ in range(reps):
            dist.all_reduce(g)
        res[f"allreduce_ms_{n}"] = 1000 * (time.perf_counter() - t0) / reps
    if rank == 0:
        Path(a.out).write_text(json.dumps(res))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--init-method")
    ap.add_argument("--out")
    ap.add_argument("--n", type=int)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--model", default="cnn")
    a = ap.parse_args()
    if a.worker:
        return _worker(a)
    n, epochs, b = (2048, 3, 32) if a.quick else (8192, 4, 64)
    from prunedata import AdaPruner
    from prunedata.datasets import FashionMNIST
    from prunedata.models import make_model
    from prunedata.training import seed_everything, train_adapruner

    os.environ.setdefault("PRUNEDATA_NO_PROGRESS", "1")
    torch.set_num_threads(1)
    ds = FashionMNIST(train=True, max_samples=n)
    seed_everything(0)
    model = make_model(a.model)
    p = AdaPruner(n, 0.7, epochs=epochs, warmup_epochs=1)
    t0 = time.perf_counter()
    train_adapruner(model, ds, p, batch_size=2 * b, seed=0, show_progress=False)
    single = (time.perf_counter() - t0) / epochs
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "res.json"
        store = Path(d) / f"store-{uuid.uuid4().hex}"
        cmd = [sys.executable, __file__, "--worker", "--init-method", f"file://{store}", "--out", str(out),
               "--n", str(n), "--epochs", str(epochs), "--batch", str(b), "--model", a.model]
        procs = []
        for r in range(2):
            env = dict(os.environ, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), GLOO_SOCKET_IFNAME="lo",
                       OMP_NUM_THREADS="1", PRUNEDATA_NO_PROGRESS="1")
            procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT))
        for pr in procs:
            if pr.wait(timeout=1800) != 0:
                sys.exit(f"worker failed with {pr.returncode}")
        res = json.loads(out.read_text())
    diff = float(np.abs(np.asarray(res["mask"]) - p.mask.detach().numpy()).max())
    k1, k2 = set(p.selection(ds).kept.tolist()), set(res["kept"])
    jac = len(k1 & k2) / len(k1 | k2)
    print(f"AdaPruner, Fashion-MNIST n={n}, model {a.model}, {epochs} epochs, global batch {2 * b}, {os.cpu_count()} cores")
    print(f"{'setting':<44}{'s/epoch':>10}{'ratio':>8}")
    print(f"{'1 process, batch ' + str(2 * b) + ', 1 thread':<44}{single:>10.2f}{1.0:>8.2f}")
    print(f"{'2 ranks (gloo), batch ' + str(b) + ' each, 1 thread each':<44}{res['epoch_s']:>10.2f}"
          f"{res['epoch_s'] / single:>8.2f}")
    print(f"max |mask(2 ranks) - mask(1 process)|: {diff:.2e}; selection Jaccard {jac:.4f}, kept "
          f"{len(k2)} vs {len(k1)}")
    print(f"{'mask-gradient all-reduce per step (2 ranks)':<44}{'ms':>10}")
    for k in sorted(k for k in res if k.startswith("allreduce_ms_")):
        print(f"{'  N = ' + format(int(k.split('_')[-1]), ','):<44}{res[k]:>10.2f}")


if __name__ == "__main__":
    main()
