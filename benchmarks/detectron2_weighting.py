"""Cost of AdaPruner's per-image loss weighting inside a Detectron2 training step.

Same model, same batch, same optimiser; each variant is one full training step (forward,
backward, SGD step):

* plain       -- Detectron2 as is: ``sum(model(batch).values()).backward()``
* heads       -- prunedata ``per_image_losses(mode="heads")`` (one batched forward, Detectron2's
                 loss functions called once per image) + ``AdaPruner.loss`` + mask step
* microbatch  -- ``per_image_losses(mode="microbatch")`` (one forward per image) + AdaPruner

plus the AdaPruner bookkeeping alone (``loss`` + ``step`` on a (B,) loss vector with an
N-entry mask, N = 16,551 like VOC07+12 trainval) and the per-image loss calls alone.

Run: ``python benchmarks/detectron2_weighting.py [--quick]`` (CPU, 2 threads). Prints a table
and writes ``benchmarks/detectron2_weighting.png``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def _median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer batch sizes and repeats")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mask-size", type=int, default=16551, help="N of the AdaPruner mask (VOC07+12 trainval)")
    ap.add_argument("--png", default=str(Path(__file__).with_suffix(".png")))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from prunedata.adapruner import AdaPruner
    from prunedata.adapters.detectron2 import (
        batch_indices, make_voc_dataset, per_image_losses, register_voc, small_faster_rcnn_config,
    )
    from detectron2.data import DatasetCatalog, build_detection_train_loader
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage
    from detectron2.utils.logger import setup_logger

    setup_logger(name="fvcore", output=None)  # keep detectron2 quiet (no-op if configured)
    batch_sizes = [1, 2, 4] if args.quick else [1, 2, 4, 8]
    repeats = 3 if args.quick else 7
    tmp = tempfile.mkdtemp(prefix="pd_d2_bench_")
    make_voc_dataset(Path(tmp) / "voc", max(batch_sizes), size=args.image_size, seed=0, max_objects=3)
    name = register_voc("bench_voc", Path(tmp) / "voc", class_names=["square", "disk", "triangle"], overwrite=True)
    cfg = small_faster_rcnn_config(3, train=(name,), image_size=args.image_size, proposals=128,
                                   rois_per_image=128, fc_dim=256, fpn_channels=128)
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    n_params = sum(p.numel() for p in model.parameters())

    rows = []
    with EventStorage(0):
        for b in batch_sizes:
            loader = build_detection_train_loader(cfg, dataset=DatasetCatalog.get(name)[:b], total_batch_size=b)
            data = next(iter(loader))
            ids = batch_indices(data)
            pruner = AdaPruner(args.mask_size, keep_ratio=0.8, epochs=3, warmup_epochs=1)
            pruner.set_epoch(1)  # pruning phase: soft weights, selection and compression terms active

            def plain():
                loss = sum(model(data).values())
                opt.zero_grad()
                loss.backward()
                opt.step()

            def weighted(mode):
                def step():
                    out = per_image_losses(model, data, mode=mode)
                    loss = pruner.loss(ids, out.losses)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    pruner.step()
                return step

            fake = torch.rand(b, requires_grad=True)

            def bookkeeping():
                pruner.loss(ids, fake + 0.1).backward()
                pruner.step()

            def fwd_plain():
                sum(model(data).values())

            def fwd_heads():
                per_image_losses(model, data, mode="heads").losses.sum()

            # interleave the variants (round-robin) so load changes on a shared machine hit all alike
            fns = {"plain": plain, "heads": weighted("heads"), "micro": weighted("microbatch"),
                   "fwd_plain": fwd_plain, "fwd_heads": fwd_heads}
            for f in fns.values():
                f()  # warm-up
            times = {k: [] for k in fns}
            for _ in range(repeats):
                for k, f in fns.items():
                    t = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t)
            med = {k: statistics.median(v) for k, v in times.items()}
            t_plain, t_heads, t_micro, t_fp, t_fh = (med[k] for k in ("plain", "heads", "micro", "fwd_plain", "fwd_heads"))
            t_book = _median_time(bookkeeping, max(repeats, 20))
            rows.append((b, t_plain, t_heads, t_micro, t_book, t_fp, t_fh))
            print(f"batch {b}: plain {t_plain * 1e3:.0f} ms, heads {t_heads * 1e3:.0f} ms, "
                  f"microbatch {t_micro * 1e3:.0f} ms", file=sys.stderr, flush=True)

    print(f"\nDetectron2 {__import__('detectron2').__version__}, ResNet-18-FPN Faster R-CNN from scratch "
          f"({n_params / 1e6:.1f}M params), {args.image_size}px images, CPU, {args.threads} threads, "
          f"median of {repeats} steps; AdaPruner mask N={args.mask_size}")
    hdr = (f"{'batch':>5} | {'plain ms':>8} | {'heads ms':>8} | {'heads/plain':>11} | {'micro ms':>8} | "
           f"{'micro/plain':>11} | {'AdaPruner loss+step ms':>22} | {'fwd plain ms':>12} | {'fwd heads ms':>12}")
    print(hdr)
    print("-" * len(hdr))
    for b, tp, th, tm, tb, tfp, tfh in rows:
        print(f"{b:>5} | {tp * 1e3:8.1f} | {th * 1e3:8.1f} | {th / tp:11.3f} | {tm * 1e3:8.1f} | {tm / tp:11.3f} | "
              f"{tb * 1e3:22.2f} | {tfp * 1e3:12.1f} | {tfh * 1e3:12.1f}")
    print("heads - plain = per-image loss calls (fwd heads - fwd plain) + AdaPruner loss/step + timing noise")
    bwd_share = statistics.mean(1 - r[5] / r[1] for r in rows)
    print(f"what dominates: the model's own forward+backward (backward + SGD step = {100 * bwd_share:.0f}% of a plain "
          f"step); per-image loss calls change the forward by {statistics.mean(r[6] / r[5] - 1 for r in rows) * 100:+.1f}% "
          f"on average; AdaPruner's loss+step is {max(r[4] / r[1] for r in rows) * 100:.2f}% of a step at most. "
          f"Micro-batching costs {statistics.mean(r[3] / r[1] for r in rows if r[0] > 1):.2f}x (batch>1): "
          "batch-1 convolutions and per-image head passes lose the batching; 'auto' therefore uses 'heads'.")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        bs = [r[0] for r in rows]
        ax.plot(bs, [r[2] / r[1] for r in rows], "o-", label="heads (1 forward + per-image loss calls)")
        ax.plot(bs, [r[3] / r[1] for r in rows], "s-", label="microbatch (1 forward per image)")
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("images per batch")
        ax.set_ylabel("step time / plain Detectron2 step")
        ax.set_title("Per-image loss weighting cost (CPU)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)
        print(f"wrote {args.png}")
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
