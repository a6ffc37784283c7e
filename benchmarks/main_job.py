"""Time the README's main job: AdaPruner on all of Fashion-MNIST, then a fresh model on the selection.

Runs the two commands of ``scripts/main_job.sh`` (without its install step) as child processes and
reports, for each, the wall time and the CPU time (user + system) of the child. CPU seconds are the
figure to compare between runs on a shared machine; wall seconds depend on what else runs.

    python benchmarks/main_job.py                      # the main job as the README gives it
    python benchmarks/main_job.py --quick              # the smoke run (6,000 samples)
    python benchmarks/main_job.py --out runs/bench     # where the selection and results go
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def timed(cmd, env):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="runs/main-job-bench")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    here = os.path.join(os.path.dirname(sys.executable), "prunedata")
    cli = [here] if os.path.exists(here) else [sys.executable, "-m", "prunedata"]
    env = dict(os.environ, PRUNEDATA_NO_PROGRESS="1")
    sel = out / "fashion-mnist-adapruner.json"
    prune = cli + ["prune", "fashion-mnist", "--method", "adapruner", "--keep-ratio", "0.7", "-o", str(sel)]
    if args.quick:
        prune.append("--quick")
    w1, c1 = timed(prune, env)
    s = json.loads(sel.read_text())
    train = cli + ["train", "fashion-mnist", "--selection", str(sel), "--epochs", "2", "-o", str(out / "train.json")]
    w2, c2 = timed(train, env)
    acc = json.loads((out / "train.json").read_text())["test_accuracy"]
    load = os.getloadavg()
    print(f"prune: {s['num_kept']} of {s['dataset_size']} kept, wall {w1:.1f} s, CPU {c1:.1f} s")
    print(f"train: test accuracy {acc:.4f}, wall {w2:.1f} s, CPU {c2:.1f} s")
    print(f"main job (prune + train, no install): wall {w1 + w2:.1f} s = {(w1 + w2) / 60:.1f} min, "
          f"CPU {c1 + c2:.1f} s = {(c1 + c2) / 60:.1f} min; load average at the end {load[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
