"""AdaPruner on detection data with Detectron2, end to end, on the CPU (a few minutes).

1. writes a small Pascal VOC dataset and a small YOLO dataset (shapes on noise) to disk;
2. registers both in Detectron2's DatasetCatalog (prunedata.adapters.detectron2);
3. prunes the VOC set with ``AdaPrunerTrainer`` (a DefaultTrainer) and the YOLO set with
   ``AdaPrunerSimpleTrainer`` (a SimpleTrainer), a small ResNet-18-FPN Faster R-CNN from scratch;
4. registers ``voc_train_pruned`` / ``yolo_train_pruned`` from the selection files and trains a plain
   Detectron2 ``DefaultTrainer`` on them, config unchanged except ``DATASETS.TRAIN``;
5. evaluates the VOC models on a held-out VOC split with Detectron2's Pascal VOC evaluator.

Needs Detectron2 (``scripts/install_detectron2.sh``). Usage::

    python examples/detectron2_voc_yolo.py [--out DIR] [--images 32] [--keep 0.75] [--quick]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="working folder (default: a new temporary folder)")
    ap.add_argument("--images", type=int, default=32, help="training images per dataset")
    ap.add_argument("--keep", type=float, default=0.75, help="fraction of images to keep")
    ap.add_argument("--epochs", type=int, default=8, help="AdaPruner epochs (warm-up included)")
    ap.add_argument("--train-iters", type=int, default=150, help="iterations of the final training runs")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch CPU threads (use 1 on a machine that is busy with other work)")
    ap.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.epochs, args.train_iters = 12, 4, 10
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from prunedata.adapruner import AdaPruner
    from prunedata.selection import Selection
    from prunedata.adapters.detectron2 import (
        AdaPrunerSimpleTrainer, AdaPrunerTrainer, detection_selection, iterations_for_epochs, make_voc_dataset,
        make_yolo_dataset, register_pruned, register_voc, register_yolo, small_faster_rcnn_config,
    )
    from detectron2.data import DatasetCatalog, build_detection_test_loader, build_detection_train_loader
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import PascalVOCDetectionEvaluator, inference_on_dataset
    from detectron2.modeling import build_model
    from detectron2.utils.logger import setup_logger

    # one Detectron2 log setup (DefaultTrainer adds its own otherwise); show warnings only
    for h in setup_logger(name="detectron2").handlers:
        h.setLevel(logging.WARNING)
    out = Path(args.out or tempfile.mkdtemp(prefix="prunedata_d2_"))
    size, ims = 96, 2
    classes = ["square", "disk", "triangle"]
    t0 = time.time()

    # 1-2. data on disk, registered
    make_voc_dataset(out / "voc", args.images, size=size, seed=0, split="trainval", vary_size=True)
    make_voc_dataset(out / "voc_test", max(8, args.images // 2), size=size, seed=99, split="test")
    make_yolo_dataset(out / "yolo", args.images, size=size, seed=1, split="train", vary_size=True)
    register_voc("voc_train", out / "voc", "trainval", classes, overwrite=True)
    register_voc("voc_test", out / "voc_test", "test", classes, year=2012, overwrite=True)
    register_yolo("yolo_train", out / "yolo", split="train", overwrite=True)  # classes from classes.txt
    print(f"data in {out}: voc_train {len(DatasetCatalog.get('voc_train'))} images, "
          f"yolo_train {len(DatasetCatalog.get('yolo_train'))} images")

    # 3a. VOC: AdaPruner through a DefaultTrainer
    n = len(DatasetCatalog.get("voc_train"))
    warmup = max(1, args.epochs // 4)
    cfg = small_faster_rcnn_config(len(classes), train=("voc_train",), image_size=size, ims_per_batch=ims,
                                   max_iter=iterations_for_epochs(n, args.epochs, ims), base_lr=0.01,
                                   output_dir=str(out / "adapruner_voc"))
    trainer = AdaPrunerTrainer(cfg, keep_ratio=args.keep, warmup_epochs=warmup, mask_lr=3.0)
    trainer.resume_or_load(resume=False)
    trainer.train()
    voc_sel = trainer.selection_path
    sel = Selection.load(voc_sel)
    print(f"VOC: AdaPruner kept {sel.num_kept}/{sel.dataset_size} images -> {voc_sel}")
    print(f"     pruned image ids: {sorted(set(r['image_id'] for r in DatasetCatalog.get('voc_train')) - set(sel.extra['image_ids']))}")

    # 3b. YOLO: AdaPruner through a SimpleTrainer
    yolo_recs = DatasetCatalog.get("yolo_train")
    ycfg = small_faster_rcnn_config(len(classes), train=("yolo_train",), image_size=size, ims_per_batch=ims)
    model = build_model(ycfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    pruner = AdaPruner(len(yolo_recs), keep_ratio=args.keep, epochs=args.epochs, warmup_epochs=warmup, mask_lr=3.0)
    st = AdaPrunerSimpleTrainer(model, build_detection_train_loader(ycfg), opt, pruner)
    st.train(0, iterations_for_epochs(len(yolo_recs), args.epochs, ims))
    ysel = detection_selection(pruner, yolo_recs, "yolo_train")
    yolo_sel = ysel.save(out / "adapruner_yolo_selection.json")
    print(f"YOLO: AdaPruner kept {ysel.num_kept}/{ysel.dataset_size} images -> {yolo_sel}")

    # 4. pruned registrations, trained by stock Detectron2
    results = {}
    for base, sel_path in (("voc_train", voc_sel), ("yolo_train", yolo_sel)):
        pruned = register_pruned(base, sel_path, overwrite=True)
        for train_name in (base, pruned):
            c = small_faster_rcnn_config(len(classes), train=(train_name,), image_size=size, ims_per_batch=ims,
                                         max_iter=args.train_iters, base_lr=0.01,
                                         output_dir=str(out / f"train_{train_name}"))
            t = time.time()
            tr = DefaultTrainer(c)
            tr.resume_or_load(resume=False)
            tr.train()
            line = f"trained on {train_name:18s} ({len(DatasetCatalog.get(train_name)):3d} images) in {time.time() - t:5.1f}s"
            if base == "voc_train":
                c.DATASETS.TEST = ("voc_test",)
                res = inference_on_dataset(tr.model, build_detection_test_loader(c, "voc_test"),
                                           PascalVOCDetectionEvaluator("voc_test"))
                ap50 = res["bbox"]["AP50"]
                results[train_name] = ap50
                line += f"; voc_test AP50 = {ap50:.1f}"
            print(line)
    print(f"done in {time.time() - t0:.0f}s; selections: {voc_sel}, {yolo_sel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
