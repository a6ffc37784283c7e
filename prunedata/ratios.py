"""The one home of keep-ratio validation and of the keep-ratio-to-count rounding."""
from __future__ import annotations

import math
from typing import Any

from .errors import PruneDataError

__all__ = ["check_keep_ratio", "num_to_keep"]


def check_keep_ratio(keep_ratio: Any, name: str = "keep_ratio") -> float:
    """``keep_ratio`` as a float strictly between 0 and 1, else a :class:`PruneDataError` saying so
    (with a hint for percentages and for 1)."""
    try:
        r = float(keep_ratio)
    except (TypeError, ValueError):
        raise PruneDataError(f"{name} must be a number in (0, 1), got {keep_ratio!r}") from None
    if not math.isfinite(r) or not 0.0 < r < 1.0:
        hint = ""
        if 1.0 < r <= 100.0:
            hint = f" Did you mean {r / 100:g} (a fraction, not a percentage)?"
        elif r == 1.0:
            hint = " A keep ratio of 1 keeps everything: no pruning is needed."
        raise PruneDataError(f"{name} is the fraction of samples to keep and must lie strictly between 0 and 1; got "
                             f"{r!r}.{hint}")
    return r


def num_to_keep(n: int, keep_ratio: float) -> int:
    """How many of ``n`` samples a keep ratio keeps: ``round(keep_ratio * n)``, at least 1 and at most
    ``n`` (every method that keeps an exact count uses this)."""
    return int(min(n, max(1, round(keep_ratio * n))))
