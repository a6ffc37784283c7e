"""Quality benchmark: test accuracy of a fresh model trained on each method's selection.

Every registered selection method (``prunedata.methods.registry.available_methods()``: adapruner,
influence, random, herding, forgetting, el2n, grand, ...) prunes a Fashion-MNIST training set at
pruning ratios 10/30/50/70 %, for several seeds; a freshly initialised model is trained on each
selection (``prunedata.training.fit``) and evaluated on the Fashion-MNIST test set. The full-data
model with the same training budget per epoch is the reference line.

    python benchmarks/quality.py --profile small            # CPU, < 30 min on 2 idle cores
    python benchmarks/quality.py --profile full --device cuda
    python benchmarks/quality.py --quick                    # smoke run (2000 samples, 1 seed)

Outputs in ``--out`` (default ``benchmarks/results/quality-<profile>``): ``results.json`` (written
atomically after every cell; a re-run with the same settings skips finished cells, so an interrupted
run resumes), ``table.md`` (mean ± sample std over seeds, in %), ``quality.png`` and one selection
file per cell under ``selections/``. Score-based baselines are scored once per seed and selected at
every ratio from the same scores (their scores do not depend on the ratio); the other methods run
once per ratio and seed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from prunedata._io import atomic_write_text
from prunedata.datasets import FashionMNIST, PrunedDataset
from prunedata.methods.registry import MethodConfig, available_methods, select
from prunedata.models import make_model
from prunedata.training import evaluate, fit

logger = logging.getLogger("benchmarks.quality")

PROFILES: Dict[str, Dict[str, Any]] = {
    # 1000 samples per class, a 3-epoch proxy, 2 training epochs per cell, 2 seeds
    "small": dict(max_samples=10000, proxy_epochs=3, train_epochs=2, seeds=[0, 1], ratios=[0.1, 0.3, 0.5, 0.7],
                  test_samples=None, model="cnn", batch_size=128, lr=0.05),
    # the whole training set, 3 seeds; meant for a GPU
    "full": dict(max_samples=None, proxy_epochs=10, train_epochs=15, seeds=[0, 1, 2], ratios=[0.1, 0.3, 0.5, 0.7],
                 test_samples=None, model="cnn", batch_size=128, lr=0.05),
    # smoke run for CI
    "quick": dict(max_samples=2000, proxy_epochs=2, train_epochs=1, seeds=[0], ratios=[0.3, 0.7],
                  test_samples=2000, model="cnn", batch_size=128, lr=0.05),
}
# settings that must match for a results file to be resumed
_RESUME_KEYS = ("max_samples", "proxy_epochs", "train_epochs", "test_samples", "model", "batch_size", "lr",
                "class_balanced")


def _parse_ratios(text: str) -> List[float]:
    out = []
    for tok in text.split(","):
        v = float(tok)
        v = v / 100 if v >= 1 else v
        if not 0 < v < 1:
            raise SystemExit(f"--ratios: pruning ratios must lie in (0, 100) %, got {tok!r}")
        out.append(round(v, 6))
    return out


def _parse_seeds(text: str) -> List[int]:
    if "," not in text:
        n = int(text)
        if n < 1:
            raise SystemExit("--seeds: give a count >= 1 (e.g. 2 = seeds 0,1) or a list (e.g. 0,1,2; one seed "
                             "as '5,')")
        return list(range(n))
    return [int(t) for t in text.split(",") if t.strip()]


def _key(method: str, ratio: float, seed: int) -> str:
    return f"{method}|{ratio:g}|{seed}"


class Results:
    """results.json: settings + one record per (method, pruning ratio, seed); saved after each cell."""

    def __init__(self, path: Path, settings: Dict[str, Any], fresh: bool = False):
        self.path = path
        self.data: Dict[str, Any] = {"settings": settings, "cells": {}}
        if path.exists() and not fresh:
            old = json.loads(path.read_text())
            diff = {k: (old["settings"].get(k), settings.get(k)) for k in _RESUME_KEYS
                    if old["settings"].get(k) != settings.get(k)}
            if diff:
                raise SystemExit(
                    f"{path} was made with other settings {diff} (old, new); use another --out or --fresh")
            self.data["cells"] = old.get("cells", {})
            logger.info("resuming: %d cells already done in %s", len(self.data["cells"]), path)

    def merge(self, other: Path) -> int:
        """Take the finished cells of another results.json made with the same settings (parallel runs)."""
        old = json.loads(Path(other).read_text())
        diff = {k: (old["settings"].get(k), self.data["settings"].get(k)) for k in _RESUME_KEYS
                if old["settings"].get(k) != self.data["settings"].get(k)}
        if diff:
            raise SystemExit(f"cannot merge {other}: other settings {diff} (theirs, ours)")
        new = {k: v for k, v in old.get("cells", {}).items() if "accuracy" in v and not self.done(k)}
        self.data["cells"].update(new)
        if new:
            atomic_write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")
        return len(new)

    def done(self, key: str) -> bool:
        c = self.data["cells"].get(key)
        return c is not None and "accuracy" in c

    def put(self, key: str, record: Dict[str, Any]) -> None:
        self.data["cells"][key] = record
        atomic_write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")


def train_and_eval(train_set, test_set, s: Dict[str, Any], seed: int, device: str) -> Dict[str, Any]:
    torch.manual_seed(seed)
    model = make_model(s["model"], num_classes=10)
    t0 = time.perf_counter()
    fit(model, train_set, epochs=s["train_epochs"], batch_size=s["batch_size"], lr=s["lr"], seed=seed,
        device=device, show_progress=False)
    train_s = time.perf_counter() - t0
    res = evaluate(model, test_set, device=device)
    return {"accuracy": res["accuracy"], "test_loss": res["loss"], "train_seconds": round(train_s, 2),
            "n_train": len(train_set)}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    s = dict(PROFILES[args.profile])
    if args.ratios:
        s["ratios"] = _parse_ratios(args.ratios)
    if args.seeds:
        s["seeds"] = _parse_seeds(args.seeds)
    if args.max_samples is not None:
        s["max_samples"] = args.max_samples
    if args.train_epochs is not None:
        s["train_epochs"] = args.train_epochs
    if args.proxy_epochs is not None:
        s["proxy_epochs"] = args.proxy_epochs
    s["class_balanced"] = bool(args.class_balanced)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    known = available_methods()
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        missing = [m for m in wanted if m not in known]
        for m in missing:
            print(f"note: method {m!r} is not registered here (known: {', '.join(known)}); skipping it",
                  file=sys.stderr)
        methods = [m for m in wanted if m in known]
    else:
        methods = list(known)
    s["methods"] = methods
    s["device"] = device
    s["profile"] = args.profile
    s["torch_threads"] = torch.get_num_threads()
    out = Path(args.out or f"benchmarks/results/quality-{args.profile}")
    (out / "selections").mkdir(parents=True, exist_ok=True)
    results = Results(out / "results.json", s, fresh=args.fresh)
    # proxies of methods that select per ratio (influence): trained once per seed, checkpointed every
    # epoch and reused for the other ratios (and after an interruption)
    proxies = out / "proxies"
    if args.fresh and proxies.exists():
        shutil.rmtree(proxies)
    for other in args.merge or []:
        print(f"merged {results.merge(Path(other) / 'results.json')} finished cells from {other}")

    train = FashionMNIST(train=True, max_samples=s["max_samples"])
    test = FashionMNIST(train=False, max_samples=s["test_samples"])
    print(f"Fashion-MNIST: {len(train)} training / {len(test)} test samples; methods: {', '.join(methods)}; "
          f"pruning ratios {[f'{100 * r:g}%' for r in s['ratios']]}; seeds {s['seeds']}; device {device}",
          flush=True)
    t_start = time.perf_counter()
    for seed in ([] if args.report_only else s["seeds"]):
        key = _key("full", 0.0, seed)
        if not results.done(key):
            rec = train_and_eval(train, test, s, seed, device)
            rec.update(method="full", prune_ratio=0.0, seed=seed)
            results.put(key, rec)
            print(f"  full data  seed {seed}: acc {100 * rec['accuracy']:.2f}%  ({rec['train_seconds']:.0f}s)", flush=True)

    from prunedata.methods import baselines

    for method in ([] if args.report_only else methods):
        for seed in s["seeds"]:
            todo = [r for r in s["ratios"] if not results.done(_key(method, r, seed))]
            if not todo:
                continue
            cfg = MethodConfig(model=s["model"], num_classes=10, epochs=s["proxy_epochs"], batch_size=s["batch_size"],
                               lr=s["lr"], seed=seed, device=device, class_balanced=s["class_balanced"],
                               show_progress=False)
            scores = None
            score_s = 0.0
            if method in baselines.SCORERS:
                t0 = time.perf_counter()
                try:
                    scores = baselines.score_samples(method, train, config=cfg)
                except Exception as e:  # record and go on with the other methods
                    _fail(results, method, todo, seed, e)
                    continue
                score_s = time.perf_counter() - t0
            for ratio in todo:
                key = _key(method, ratio, seed)
                t0 = time.perf_counter()
                try:
                    if scores is not None:
                        sel = baselines.select_by_scores(scores, train, 1.0 - ratio, config=cfg)
                    else:
                        opts = {}
                        if method == "influence":
                            proxies.mkdir(parents=True, exist_ok=True)
                            opts = {"checkpoint": str(proxies / f"{method}-seed{seed}.pt"), "resume": True}
                        sel = select(method, train, 1.0 - ratio, config=cfg, **opts)
                except Exception as e:
                    _fail(results, method, [ratio], seed, e)
                    continue
                select_s = time.perf_counter() - t0 + score_s
                sel.save(out / "selections" / f"{method}-prune{round(100 * ratio)}-seed{seed}.json.gz")
                rec = train_and_eval(PrunedDataset(train, sel, check=False), test, s, seed, device)
                counts = np.bincount(train.targets.numpy()[sel.kept], minlength=10)
                rec.update(method=method, prune_ratio=ratio, seed=seed, n_kept=sel.num_kept,
                           select_seconds=round(select_s, 2), class_min=int(counts.min()), class_max=int(counts.max()))
                results.put(key, rec)
                print(f"  {method:<11} prune {100 * ratio:>4.0f}%  seed {seed}: acc {100 * rec['accuracy']:.2f}%  "
                      f"(kept {sel.num_kept}, select {select_s:.0f}s, train {rec['train_seconds']:.0f}s)", flush=True)

    s["wall_seconds_this_run"] = round(time.perf_counter() - t_start, 1)
    table = make_table(results.data, methods, s["ratios"], s["seeds"])
    header = (f"Fashion-MNIST, profile `{args.profile}`: {len(train)} training samples, model `{s['model']}`, "
              f"proxy {s['proxy_epochs']} epochs, {s['train_epochs']} training epochs per cell, seeds {s['seeds']}, "
              f"class_balanced={s['class_balanced']}, device {device}. Test accuracy (%) of a fresh model trained on "
              f"the kept samples, mean ± sample std over seeds; `select s` = mean selection time per cell (score-based "
              f"methods: scoring once per seed + top-k).\n\n")
    atomic_write_text(out / "table.md", header + table + "\n")
    plot(results.data, methods, s["ratios"], out / "quality.png", title=f"Fashion-MNIST ({len(train)} train), {args.profile}")
    print()
    print(table)
    print(f"\nthis run: {s['wall_seconds_this_run']:.0f}s; results in {out}/ (results.json, table.md, quality.png)")
    return results.data


def _fail(results: Results, method: str, ratios: List[float], seed: int, e: BaseException) -> None:
    msg = f"{type(e).__name__}: {e}"
    print(f"  {method}: FAILED ({msg}); skipping", file=sys.stderr, flush=True)
    logger.debug("%s", traceback.format_exc())
    for r in ratios:
        results.data["cells"][_key(method, r, seed)] = {"method": method, "prune_ratio": r, "seed": seed, "error": msg}
    results.put(_key(method, ratios[0], seed), results.data["cells"][_key(method, ratios[0], seed)])


def _stats(cells: Dict[str, Any], method: str, ratio: float, seeds: List[int], field: str = "accuracy"):
    vals = [cells[_key(method, ratio, sd)][field] for sd in seeds
            if _key(method, ratio, sd) in cells and field in cells[_key(method, ratio, sd)]]
    if not vals:
        return None, None, 0
    a = np.asarray(vals, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0, a.size


def make_table(data: Dict[str, Any], methods: List[str], ratios: List[float], seeds: List[int]) -> str:
    cells = data["cells"]
    cols = [f"prune {100 * r:g}%" for r in ratios]
    lines = ["| method | " + " | ".join(cols) + " | select s |", "|---" * (len(cols) + 2) + "|"]
    m, sd, n = _stats(cells, "full", 0.0, seeds)
    if n:
        full = f"{100 * m:.2f} ± {100 * sd:.2f}"
        lines.append("| full data | " + " | ".join([full] * len(cols)) + " | – |")
    for meth in methods:
        row, times = [], []
        for r in ratios:
            m, sd, n = _stats(cells, meth, r, seeds)
            row.append("–" if not n else f"{100 * m:.2f} ± {100 * sd:.2f}" + ("" if n == len(seeds) else f" (n={n})"))
            t, _, k = _stats(cells, meth, r, seeds, "select_seconds")
            if k:
                times.append(t)
        errs = [c for c in cells.values() if c.get("method") == meth and "error" in c]
        name = meth + (" (errors)" if errs else "")
        lines.append(f"| {name} | " + " | ".join(row) + f" | {np.mean(times):.1f} |" if times else
                     f"| {name} | " + " | ".join(row) + " | – |")
    full_n = [c["n_train"] for c in cells.values() if c.get("method") == "full" and "n_train" in c]
    notes = []
    if full_n:
        for meth in methods:
            got, want, at = [], [], []
            for r in ratios:
                k, _, cnt = _stats(cells, meth, r, seeds, "n_kept")
                if cnt and round(k) != round((1 - r) * full_n[0]):
                    got.append(f"{k:.0f}")
                    want.append(f"{round((1 - r) * full_n[0])}")
                    at.append(f"{100 * r:g}")
            if got:
                notes.append(f"- {meth} kept {'/'.join(got)} samples (mean over seeds) at pruning ratio "
                             f"{'/'.join(at)}% where {'/'.join(want)} were asked for")
    return "\n".join(lines + ([""] + notes if notes else []))


def plot(data: Dict[str, Any], methods: List[str], ratios: List[float], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = data["settings"]["seeds"]
    cells = data["cells"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    m, sd, n = _stats(cells, "full", 0.0, seeds)
    if n:
        ax.axhline(100 * m, color="black", lw=1.5, ls="--", label=f"full data ({100 * m:.2f}%)")
        ax.axhspan(100 * (m - sd), 100 * (m + sd), color="black", alpha=0.08)
    markers = "osD^v<>pX*h"
    for i, meth in enumerate(methods):
        xs, ys, es = [], [], []
        for r in ratios:
            mm, ss, nn = _stats(cells, meth, r, seeds)
            if nn:
                xs.append(100 * r)
                ys.append(100 * mm)
                es.append(100 * ss)
        if xs:
            ax.errorbar(xs, ys, yerr=es, marker=markers[i % len(markers)], capsize=3, label=meth)
    ax.set_xlabel("pruning ratio (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks([100 * r for r in ratios])
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="small")
    p.add_argument("--quick", action="store_true", help="same as --profile quick (smoke run)")
    p.add_argument("--methods", default=None, help="comma-separated method names (default: all registered)")
    p.add_argument("--ratios", default=None, help="pruning ratios in %%, e.g. 10,30,50,70")
    p.add_argument("--seeds", default=None, help="number of seeds (2 = seeds 0,1) or a list (0,1,2; a single seed as '5,')")
    p.add_argument("--max-samples", type=int, default=None, help="override the profile's training-set size")
    p.add_argument("--train-epochs", type=int, default=None, help="override the profile's training epochs")
    p.add_argument("--proxy-epochs", type=int, default=None, help="override the profile's proxy epochs")
    p.add_argument("--class-balanced", action="store_true", help="class-balanced selections")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/quality-<profile>)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing results.json in --out")
    p.add_argument("--merge", nargs="+", metavar="DIR", default=None,
                   help="first copy finished cells from these output folders (runs split over machines)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: write table.md and quality.png from the cells already in --out (after --merge)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (torch.set_num_threads)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.profile = "quick"
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("PRUNEDATA_NO_PROGRESS", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
