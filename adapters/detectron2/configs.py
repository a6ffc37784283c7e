"""A small Faster R-CNN config for CPU runs (tests, examples, benchmarks).

ResNet-18 + FPN trained from scratch with BatchNorm (FrozenBN with random weights diverges at
once), small images, few anchors/proposals/ROIs. Start from it and override fields as usual.
"""
from __future__ import annotations

from typing import Sequence

from ._require import require_detectron2

require_detectron2()

from detectron2 import model_zoo  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402

__all__ = ["small_faster_rcnn_config"]


def small_faster_rcnn_config(num_classes: int, *, train: Sequence[str] = (), image_size: int = 96,
                             norm: str = "BN", fpn_channels: int = 64, fc_dim: int = 128,
                             proposals: int = 64, rois_per_image: int = 64, ims_per_batch: int = 2,
                             max_iter: int = 20, base_lr: float = 0.01, output_dir: str = "./output",
                             device: str = "cpu", seed: int = 0):
    """A ``CfgNode`` for a ResNet-18-FPN Faster R-CNN sized for ``image_size``-pixel images on a CPU."""
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.update(DEVICE=device, WEIGHTS="", PIXEL_MEAN=[128.0, 128.0, 128.0], PIXEL_STD=[64.0, 64.0, 64.0])
    cfg.MODEL.RESNETS.update(DEPTH=18, RES2_OUT_CHANNELS=64, NORM=norm)
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.FPN.update(OUT_CHANNELS=fpn_channels, NORM="" if norm == "BN" else norm)
    s = max(4, image_size // 12)
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[s], [2 * s], [4 * s], [8 * s], [16 * s]]
    cfg.MODEL.RPN.update(PRE_NMS_TOPK_TRAIN=4 * proposals, PRE_NMS_TOPK_TEST=4 * proposals,
                         POST_NMS_TOPK_TRAIN=proposals, POST_NMS_TOPK_TEST=proposals, BATCH_SIZE_PER_IMAGE=128)
    cfg.MODEL.ROI_HEADS.update(NUM_CLASSES=int(num_classes), BATCH_SIZE_PER_IMAGE=rois_per_image)
    cfg.MODEL.ROI_BOX_HEAD.update(FC_DIM=fc_dim, NORM="")
    cfg.INPUT.update(MIN_SIZE_TRAIN=(image_size,), MAX_SIZE_TRAIN=image_size, MIN_SIZE_TEST=image_size,
                     MAX_SIZE_TEST=image_size, RANDOM_FLIP="none")
    cfg.DATASETS.update(TRAIN=tuple(train), TEST=())
    cfg.DATALOADER.update(NUM_WORKERS=0, ASPECT_RATIO_GROUPING=False)
    cfg.SOLVER.update(IMS_PER_BATCH=ims_per_batch, BASE_LR=base_lr, MAX_ITER=max_iter, STEPS=(), WARMUP_ITERS=0,
                      CHECKPOINT_PERIOD=10 ** 9)
    cfg.TEST.EVAL_PERIOD = 0
    cfg.update(OUTPUT_DIR=output_dir, SEED=seed)
    return cfg
