"""prunedata: make training data smaller without making models worse."""
from __future__ import annotations

import logging

__version__ = "0.1.0"

from .errors import (LossShapeError, NonFiniteLossError, PruneDataError, SelectionFormatError,  # noqa: E402
                     SelectionMismatchError)
from .identity import IndexedDataset, dataset_fingerprint, keys_fingerprint, with_indices  # noqa: E402
from .selection import Selection, load_selection  # noqa: E402
from .datasets import PrunedDataset  # noqa: E402
from .adapruner import AdaPruner, AdaPrunerSampler  # noqa: E402
from .checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "__version__", "PruneDataError", "SelectionMismatchError", "SelectionFormatError", "LossShapeError",
    "NonFiniteLossError", "IndexedDataset", "with_indices", "dataset_fingerprint", "keys_fingerprint",
    "Selection", "load_selection", "PrunedDataset", "AdaPruner", "AdaPrunerSampler", "save_checkpoint",
    "load_checkpoint",
]
