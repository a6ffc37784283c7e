"""Detectron2 integration: VOC/YOLO datasets, AdaPruner for detection, pruned registrations.

Importing this package does not import Detectron2; using any of its names does, and raises an
ImportError naming ``scripts/install_detectron2.sh`` when Detectron2 is missing. The names by module
(``_EXPORTS``): :mod:`.datasets` loads and registers VOC/YOLO directories and pruned datasets;
:mod:`.losses` gives per-image losses ("heads": one batched forward and Detectron2's loss functions per
image; "microbatch": one forward per image); :mod:`.training` has :class:`AdaPrunerTrainer` (a
``DefaultTrainer``) and :class:`AdaPrunerSimpleTrainer` (a ``SimpleTrainer``); :mod:`.configs` a
ResNet-18-FPN Faster R-CNN for CPU runs; :mod:`.synthetic` small synthetic detection datasets on disk.
"""
from __future__ import annotations

import importlib
from typing import Any

from ._require import INSTALL_HINT, require_detectron2

_EXPORTS = {
    "datasets": ("AnnotationError", "VOC_CLASSES", "load_voc", "load_yolo", "register_voc", "register_yolo",
                 "register_pruned", "detection_fingerprint", "index_records", "read_class_names"),
    "losses": ("PerImageLosses", "per_image_losses", "supports_heads_mode", "batchnorm_layers", "resolve_mode"),
    "configs": ("small_faster_rcnn_config",),
    "synthetic": ("make_voc_dataset", "make_yolo_dataset", "SHAPE_CLASSES"),
    "training": ("AdaPrunerSimpleTrainer", "AdaPrunerTrainer", "batch_indices", "detection_selection",
                 "iterations_for_epochs"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE) + ["INSTALL_HINT", "require_detectron2", "is_available"]


def is_available() -> bool:
    """True when Detectron2 can be imported."""
    try:
        require_detectron2()
    except ImportError:
        return False
    return True


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
