"""AdaPruner (Yang et al., 2024): a learnable per-sample keep-mask trained jointly with the model.

:mod:`.mask` holds :class:`AdaPruner` (the mask, its schedule and steps; its result and distributed
parts in :mod:`.result` and :mod:`.sync`, its id lookup in :mod:`.keys`), :mod:`.sampler` the
:class:`AdaPrunerSampler`, :mod:`.checks` the input checks. See :mod:`prunedata.adapruner.mask` for
the method and how it maps to the paper.
"""
from __future__ import annotations

from ..ratios import check_keep_ratio
from .checks import check_per_sample_losses
from .mask import AdaPruner
from .sampler import AdaPrunerSampler

__all__ = ["AdaPruner", "AdaPrunerSampler", "check_keep_ratio", "check_per_sample_losses"]
