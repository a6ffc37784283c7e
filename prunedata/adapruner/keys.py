"""How a batch's sample ids become mask positions: dataset indices, or sample keys (a stream's
``__key__``) through a key table."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import PruneDataError


class MaskKeys:
    """Id-to-position lookup of :class:`~prunedata.adapruner.AdaPruner` (keys: see :meth:`use_keys`)."""

    def _check_indices(self, indices: Any) -> torch.Tensor:
        """Mask positions of a batch's ids (dataset indices, or keys once :meth:`use_keys` was called)."""
        if self._key_pos is not None and isinstance(indices, (list, tuple)) and indices and \
                isinstance(indices[0], str):
            return self.positions(indices).to(self.mask.device)
        if isinstance(indices, (list, tuple, np.ndarray)):
            indices = torch.as_tensor(np.asarray(indices, dtype=np.int64) if len(indices) == 0 else np.asarray(indices))
        if not isinstance(indices, torch.Tensor):
            raise PruneDataError(f"sample ids must be a tensor of dataset indices, got {type(indices).__name__}. Wrap "
                                 "the dataset in prunedata.IndexedDataset so each batch carries its indices.")
        if indices.dtype.is_floating_point or indices.dtype == torch.bool or indices.dim() != 1:
            raise PruneDataError(f"sample ids must be a 1-D integer tensor, got dtype {indices.dtype} shape "
                                 f"{tuple(indices.shape)}")
        if indices.numel():
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi >= self.num_samples:
                raise PruneDataError(f"sample index {lo if lo < 0 else hi} is outside the dataset (size "
                                     f"{self.num_samples}); the pruner was built for another dataset, or the ids are "
                                     "not dataset indices")
        return indices.to(self.mask.device, torch.long)

    def use_keys(self, keys: Any) -> "MaskKeys":
        """Address the mask by sample key as well as by index: entry ``i`` belongs to ``keys[i]``
        (a small key-to-position table). Afterwards the methods that take indices also take a
        sequence of keys (strings), e.g. the ``__key__`` list of a webdataset batch."""
        keys = [str(k) for k in keys]
        if len(keys) != self.num_samples:
            raise PruneDataError(f"got {len(keys)} keys for a mask of {self.num_samples} entries")
        pos = {k: i for i, k in enumerate(keys)}
        if len(pos) != len(keys):
            dup = [k for k in pos if keys.count(k) > 1][:3]
            raise PruneDataError(f"sample ids must be unique; repeated: {dup}")
        self.keys, self._key_pos = keys, pos
        return self

    def positions(self, keys: Any) -> torch.Tensor:
        """Mask positions of the given sample keys (see :meth:`use_keys`)."""
        if self._key_pos is None:
            raise PruneDataError("this AdaPruner is addressed by dataset index; give it keys with use_keys(...)")
        pos = self._key_pos
        try:
            return torch.tensor([pos[str(k)] for k in keys], dtype=torch.long)
        except KeyError:
            missing = [str(k) for k in keys if str(k) not in pos]
            raise PruneDataError(f"{len(missing)} sample ids of this batch are not in the pruner's key set, e.g. "
                                 f"{missing[:3]}; it was built for {len(self.keys)} ids (first {self.keys[:2]}). Build "
                                 "it from the manifest of the shards you are streaming") from None
