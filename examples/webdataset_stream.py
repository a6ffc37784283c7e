"""AdaPruner on a webdataset stream, then pruned shards.

1. write Fashion-MNIST as tar shards (PNG + .cls), the way large datasets are stored;
2. scan the shards once for their keys (a manifest), or load it if it exists;
3. learn the AdaPruner mask while streaming all samples through a DataLoader with workers; the
   batch's ``__key__`` list addresses the mask;
4. save the keyed selection, write pruned shards plus their manifest;
5. train a fresh model on the pruned stream (``pruned_webdataset``) and evaluate both models.

    python examples/webdataset_stream.py --max-samples 6000 --epochs 4 --out runs/wds_example
"""
from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image

from prunedata.adapters import webdataset as pwds
from prunedata.datasets import FashionMNIST
from prunedata.models import make_model
from prunedata.training import evaluate

log = logging.getLogger("example")
MEAN, STD = FashionMNIST.mean, FashionMNIST.std


def write_shards(folder: Path, ds: FashionMNIST, per_shard: int) -> list:
    """Fashion-MNIST as tar shards: ``<key>.png`` and ``<key>.cls`` per sample."""
    folder.mkdir(parents=True, exist_ok=True)
    urls = []
    images, labels = ds.data.numpy(), ds.targets.numpy()
    for s in range(0, len(ds), per_shard):
        url = str(folder / f"fmnist-train-{s // per_shard:06d}.tar")
        with wds.TarWriter(url) as tw:
            for i in range(s, min(len(ds), s + per_shard)):
                buf = io.BytesIO()
                Image.fromarray(images[i]).save(buf, format="PNG")
                tw.write({"__key__": f"fm{i:06d}", "png": buf.getvalue(), "cls": str(int(labels[i])).encode()})
        urls.append(url)
    return urls


def to_x(img: Image.Image) -> torch.Tensor:
    x = torch.from_numpy(np.array(img.convert("L"), dtype=np.float32)) / 255.0
    return ((x - MEAN) / STD).unsqueeze(0)


def stream(ds, batch_size: int, shuffle: int = 1000):
    """raw samples -> (keys, images, labels) batches"""
    return ds.shuffle(shuffle).decode("pil").to_tuple("__key__", "png", "cls").map_tuple(None, to_x, None).batched(batch_size)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-samples", type=int, default=6000)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--keep-ratio", type=float, default=0.7)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--out", default="runs/wds_example")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(a.out)
    torch.manual_seed(0)

    # --- 1. shards (in real use they already exist) -----------------------------------------
    train = FashionMNIST(train=True, max_samples=a.max_samples)
    test = FashionMNIST(train=False, max_samples=2000)
    urls = write_shards(out / "shards", train, a.per_shard)

    # --- 2. the key set: one pass over tar headers, saved as a manifest ----------------------
    manifest_path = out / "shards" / "manifest.json"
    manifest = pwds.scan_shards(urls)
    manifest.save(manifest_path)
    log.info("%r", manifest)

    # --- 3. AdaPruner on the stream: every sample once per epoch, ids from __key__ ------------
    pruner = pwds.KeyedAdaPruner.from_manifest(manifest_path, keep_ratio=a.keep_ratio, epochs=a.epochs,
                                               warmup_epochs=1)
    model = make_model("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ds = stream(wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=wds.split_by_node, seed=0), a.batch_size)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=a.num_workers)
    for epoch in range(pruner.epochs):
        pruner.set_epoch(epoch)
        model.train()
        for keys, x, y in loader:
            loss = pruner.loss(keys, F.cross_entropy(model(x), y, reduction="none"))
            opt.zero_grad()
            loss.backward()
            opt.step()
            pruner.step()
        rec = pruner.end_epoch()
        log.info("epoch %d: samples %d, kept(m>0) %.3f, mean loss %.3f", epoch, rec["samples"],
                 rec["keep_ratio_threshold"], rec["mean_loss"])
    print("AdaPruner model on the test set:", evaluate(model, test))

    # --- 4. the keyed selection and pruned shards --------------------------------------------
    sel = pruner.selection()
    sel.save(out / "selection.json")
    print(sel.summary())
    pruned = pwds.write_pruned_shards(urls, sel, out / "pruned", manifest=manifest, overwrite=True)
    print(f"pruned shards: {pruned!r} in {out / 'pruned'}")

    # --- 5. train on the pruned stream: filter on read (or read out/pruned/*.tar directly) ----
    model2 = make_model("cnn")
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9)
    ds2 = stream(pwds.pruned_webdataset(urls, out / "selection.json", manifest=manifest_path,
                                        shardshuffle=len(urls), seed=1), a.batch_size)
    loader2 = torch.utils.data.DataLoader(ds2, batch_size=None, num_workers=a.num_workers)
    for epoch in range(a.epochs):
        model2.train()
        n = 0
        for _keys, x, y in loader2:
            loss = F.cross_entropy(model2(x), y)
            opt2.zero_grad()
            loss.backward()
            opt2.step()
            n += len(y)
        log.info("pruned-stream epoch %d: %d samples", epoch, n)
    print(f"model trained on the pruned stream ({n} of {len(train)} samples per epoch):", evaluate(model2, test))


if __name__ == "__main__":
    main()
