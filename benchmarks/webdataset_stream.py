"""Streaming cost of pruned webdataset shards versus the full stream.

Builds tar shards of real Fashion-MNIST images (upscaled, JPEG by default) with ``.cls`` labels,
then, for several keep ratios, times one pass (decode to tensors) over

* ``full``          -- the full shards, no pruning (the reference);
* ``stage``         -- the full shards through the pruning stage (``select_keys`` after grouping,
                       before ``decode``): pruned samples are read from the tar but never decoded;
* ``stage+skip``    -- ``pruned_webdataset`` (the stage plus ``select_files``): pruned files' bytes
                       are not even copied out of the tar stream;
* ``pruned shards`` -- the shards written by ``write_pruned_shards``;

and prints each as a ratio of ``full``. Dropping before decode should make the cost roughly
proportional to the kept fraction (plus the cost of scanning past the pruned bytes).

Times are CPU seconds of the (single) benchmark process by default, so the ratios hold on a busy
machine; ``--wall`` uses the wall clock.

    python benchmarks/webdataset_stream.py [--quick] [--samples N] [--repeats R] [--wall] [--out DIR]
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PRUNEDATA_NO_PROGRESS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import webdataset as wds  # noqa: E402
from PIL import Image  # noqa: E402

from prunedata.adapters import webdataset as pwds  # noqa: E402
from prunedata.datasets import FashionMNIST  # noqa: E402


def build_shards(folder: Path, n: int, per_shard: int, size: int, fmt: str, fixed_mtime: bool = True):
    ds = FashionMNIST(train=True, max_samples=n)
    images, labels = ds.data.numpy(), ds.targets.numpy()
    urls = []
    for s in range(0, n, per_shard):
        url = str(folder / f"train-{s // per_shard:06d}.tar")
        # a fixed integer mtime, as write_pruned_shards uses: both sides get plain ustar headers
        # (TarWriter's default float mtime adds a pax header to every file, slower to parse)
        with wds.TarWriter(url, mtime=0 if fixed_mtime else None) as tw:
            for i in range(s, min(n, s + per_shard)):
                img = Image.fromarray(images[i]).resize((size, size), Image.BILINEAR).convert("RGB")
                buf = io.BytesIO()
                img.save(buf, format="JPEG" if fmt == "jpg" else "PNG", quality=90)
                tw.write({"__key__": f"fm{i:07d}", fmt: buf.getvalue(), "cls": str(int(labels[i])).encode()})
        urls.append(url)
    return urls


def to_tensor(img):
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


def finish(ds, fmt):
    return ds.decode("pil").to_tuple(fmt, "cls").map_tuple(to_tensor, None)


CLOCK = time.process_time  # CPU seconds of this process: robust on a shared machine (see --wall)


def one_pass(ds) -> tuple:
    t0 = CLOCK()
    n = 0
    for _x, _y in ds:
        n += 1
    return CLOCK() - t0, n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run (3k samples, 2 repeats)")
    ap.add_argument("--samples", type=int, default=None, help="samples in the full shards (default 10000)")
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=128, help="side of the stored images (upscaled)")
    ap.add_argument("--format", choices=["jpg", "png"], default="jpg")
    ap.add_argument("--keep", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--pax", action="store_true",
                    help="write the full shards with TarWriter's default float mtimes (a pax header per file)")
    ap.add_argument("--wall", action="store_true",
                    help="time with the wall clock instead of this process's CPU time (use on an idle machine)")
    ap.add_argument("--out", default=None, help="folder for the shards (default: a temporary one)")
    ap.add_argument("--plot", default="benchmarks/webdataset_stream.png")
    args = ap.parse_args(argv)
    global CLOCK
    if args.wall:
        CLOCK = time.perf_counter
    n = args.samples or (3000 if args.quick else 10000)
    repeats = args.repeats or (2 if args.quick else 3)
    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory(prefix="wds_bench_") if args.out is None else None
    root = Path(args.out or tmp.name)
    (root / "full").mkdir(parents=True, exist_ok=True)
    fmt = args.format

    t0 = time.perf_counter()
    urls = build_shards(root / "full", n, args.per_shard, args.image_size, fmt, fixed_mtime=not args.pax)
    t_build = time.perf_counter() - t0
    size_mb = sum(os.path.getsize(u) for u in urls) / 1e6
    t0 = time.perf_counter()
    manifest = pwds.scan_shards(urls, show_progress=False)
    t_scan = time.perf_counter() - t0
    print(f"# {n} samples ({args.image_size}x{args.image_size} {fmt}), {len(urls)} shards, {size_mb:.1f} MB"
          f"{', pax headers' if args.pax else ''}; "
          f"built in {t_build:.1f}s; scan_shards (keys only) {t_scan:.2f}s wall; torch threads 1, "
          f"median of {repeats} interleaved rounds, in-process (num_workers=0), clock: {'wall' if args.wall else 'process CPU'}")

    def full():
        return finish(wds.WebDataset(urls, shardshuffle=False), fmt)

    def read_only():
        return wds.WebDataset(urls, shardshuffle=False).to_tuple("__key__", "cls")

    reads = []
    for _ in range(repeats):
        t_full, n_full = one_pass(full())
        reads.append(one_pass(read_only())[0] / t_full)
    r0 = float(np.median(reads))  # the stage reads every sample's bytes, then decodes only the kept ones
    print(f"# full stream: {t_full:.2f}s for {n_full} samples ({n_full / t_full:.0f} samples/s); "
          f"reading + grouping alone (no decode): {r0:.2f} of that")
    rng = np.random.default_rng(0)
    rows = []
    header = (f"{'keep':>5} {'kept':>6} {'read+kept':>9} | {'stage':>7} {'stage+skip':>10} {'pruned shards':>13} | "
              f"{'write s':>7} {'pruned MB':>9}")
    print(header)
    print("-" * len(header))
    for keep in args.keep:
        kept = [k for k in manifest.ids() if rng.random() < keep]
        sel = pwds.keyed_selection(kept, manifest, method="random", params={"keep_ratio": keep})
        out = root / f"pruned_{keep:.2f}"
        t0 = CLOCK()
        pm = pwds.write_pruned_shards(urls, sel, out, overwrite=True, show_progress=False)
        t_write = CLOCK() - t0
        pruned_mb = sum(os.path.getsize(u) for u in pm.urls) / 1e6

        def stage():
            return finish(wds.WebDataset(urls, shardshuffle=False).compose(pwds.select_keys(sel)), fmt)

        def stage_skip():
            return finish(pwds.pruned_webdataset(urls, sel), fmt)

        def pruned():
            return finish(wds.WebDataset(pm.urls, shardshuffle=False), fmt)

        # rounds interleave the full stream with the variants; each round gives ratios to that round's
        # full pass, and the median over rounds is reported (load drifts cancel out)
        makers = {"full": full, "stage": stage, "stage+skip": stage_skip, "pruned shards": pruned}
        ratios = {name: [] for name in makers if name != "full"}
        for _ in range(repeats):
            times = {}
            for name, make in makers.items():
                times[name], cnt = one_pass(make())
                expected = n if name == "full" else sel.num_kept
                if cnt != expected:
                    raise SystemExit(f"{name}: streamed {cnt} samples, expected {expected}")
            for name in ratios:
                ratios[name].append(times[name] / times["full"])
        res = {name: float(np.median(v)) for name, v in ratios.items()}
        frac = sel.num_kept / n
        rows.append((keep, frac, res, t_write))
        print(f"{keep:5.2f} {frac:6.3f} {r0 + (1 - r0) * frac:9.3f} | {res['stage']:7.3f} {res['stage+skip']:10.3f} {res['pruned shards']:13.3f} | "
              f"{t_write:7.2f} {pruned_mb:9.1f}")
    print("# figures: time of one pass / time of the full stream (1.000 = no saving); 'kept' is the kept "
          "fraction (ideal for pruned shards); 'read+kept' = read fraction + (1 - read fraction) * kept, "
          "the expected ratio for the stage, which must still read past the pruned bytes")
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(5, 4))
            fr = [r[1] for r in rows]
            for name, mk in (("stage", "o-"), ("stage+skip", "s-"), ("pruned shards", "^-")):
                ax.plot(fr, [r[2][name] for r in rows], mk, label=name)
            ax.plot([0, 1], [0, 1], "k:", label="proportional")
            ax.plot([0, 1], [r0, 1], color="grey", ls="--", lw=1, label="read all + decode kept")
            ax.set_xlabel("kept fraction")
            ax.set_ylabel("stream time / full stream time")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.1)
            ax.set_title(f"webdataset: {n} samples, {args.image_size}px {fmt}")
            ax.legend()
            fig.tight_layout()
            Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(args.plot, dpi=120)
            print(f"# plot: {args.plot}")
        except ImportError:
            print("# matplotlib not installed; no plot", file=sys.stderr)
    if tmp is not None:
        tmp.cleanup()
    return rows


if __name__ == "__main__":
    main()
