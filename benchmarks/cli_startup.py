"""CPU cost of the command line's light commands, measured against Python itself and ``import torch``.

``prunedata --help``, ``prunedata methods`` and ``prunedata --version`` must answer in well under a
second of CPU: they import neither torch nor numpy. Each command runs ``--repeats`` times as a fresh
process, interleaved with the references; the report is the median user+system CPU seconds of the
child and its ratio to ``import torch``.

    python benchmarks/cli_startup.py --repeats 7
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time


def cpu_of(cmd):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    here = os.path.join(os.path.dirname(sys.executable), "prunedata")  # the script of this environment
    exe = here if os.path.exists(here) else shutil.which("prunedata")
    cli = [exe] if exe else [sys.executable, "-m", "prunedata"]
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "prunedata --version": cli + ["--version"],
        "prunedata --help": cli + ["--help"],
        "prunedata methods": cli + ["methods"],
        "prunedata prune --help": cli + ["prune", "--help"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    }
    os.environ["PRUNEDATA_NO_PROGRESS"] = "1"
    cpu = {k: [] for k in cases}
    wall = {k: [] for k in cases}
    for _ in range(args.repeats):  # interleaved: the machine's load hits every case alike
        for k, cmd in cases.items():
            c, w = cpu_of(cmd)
            cpu[k].append(c)
            wall[k].append(w)
    torch_cpu = statistics.median(cpu["python -c 'import torch'"])
    print(f"{'command':<28} {'CPU s (median)':>15} {'wall s':>8} {'/ import torch':>15}")
    for k in cases:
        c = statistics.median(cpu[k])
        print(f"{k:<28} {c:>15.3f} {statistics.median(wall[k]):>8.3f} {c / torch_cpu:>15.3f}")
    print(f"({args.repeats} runs each, interleaved; command: {' '.join(cli)})")
    worst = max(statistics.median(cpu[k]) for k in cases if k.startswith("prunedata"))
    print(f"slowest light command: {worst:.3f} s CPU (target: well under 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
