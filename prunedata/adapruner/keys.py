"""The key table: mask entries addressed by sample key (a stream's ``__key__``) as well as by index."""
from __future__ import annotations

from typing import Any

import torch

from ..errors import PruneDataError


class MaskKeys:
    """Key-to-position lookup of :class:`~prunedata.adapruner.AdaPruner` (see :meth:`use_keys`)."""

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
            raise PruneDataError(
                f"{len(missing)} sample ids of this batch are not in the pruner's key set, e.g. {missing[:3]}; "
                f"it was built for {len(self.keys)} ids (first {self.keys[:2]}). Build it from the manifest "
                "of the shards you are streaming"
            ) from None
