"""prunedata: make training data smaller without making models worse.

The public names below are imported on first use (PEP 562), so ``import prunedata`` and the
command line's ``--help`` do not pay for importing torch.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "PruneDataError": "errors", "SelectionMismatchError": "errors", "SelectionFormatError": "errors",
    "LossShapeError": "errors", "NonFiniteLossError": "errors", "MissingDependencyError": "errors",
    "IndexedDataset": "identity", "with_indices": "identity", "dataset_fingerprint": "identity",
    "keys_fingerprint": "identity",
    "Selection": "selection", "load_selection": "selection",
    "PrunedDataset": "datasets",
    "AdaPruner": "adapruner", "AdaPrunerSampler": "adapruner",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
}

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prunedata' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
