"""Checks of AdaPruner's inputs: per-sample losses and numeric parameters."""
from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import LossShapeError, NonFiniteLossError, PruneDataError


def check_per_sample_losses(losses: Any, n_ids: int) -> torch.Tensor:
    """Validate unreduced per-sample losses; returns them as a 1-D float tensor."""
    if not isinstance(losses, torch.Tensor):
        raise LossShapeError(f"per-sample losses must be a torch.Tensor, got {type(losses).__name__}")
    if losses.dim() == 0:
        raise LossShapeError("got a scalar loss, but AdaPruner needs one loss per sample. Compute the loss with "
                             "reduction='none' (e.g. F.cross_entropy(logits, y, reduction='none')).")
    if losses.dim() == 2 and losses.shape[1] == 1:
        losses = losses[:, 0]
    elif losses.dim() > 1:
        raise LossShapeError(f"per-sample losses must be 1-D (one per sample), got shape {tuple(losses.shape)}; "
                             "reduce over all but the batch dimension first, e.g. loss.flatten(1).mean(1).")
    if losses.shape[0] != n_ids:
        raise LossShapeError(f"got {losses.shape[0]} per-sample losses for {n_ids} sample ids; the batch's ids and "
                             "losses must match one to one (was the loss reduced, or the ids taken from another "
                             "batch?)")
    if not torch.is_floating_point(losses):
        raise LossShapeError(f"per-sample losses must be floating point, got {losses.dtype}")
    ld = losses.detach()
    finite = torch.isfinite(ld)
    if not bool((finite & (ld >= 0)).all()):  # one host sync for both checks
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten()[:5].tolist()
            raise NonFiniteLossError(f"{int((~finite).sum())} per-sample losses are NaN or infinite (batch positions "
                                     f"{bad}); lower the learning rate, check the inputs, or clip gradients")
        bad = (ld < 0).nonzero().flatten()[:5].tolist()
        raise LossShapeError(f"{int((ld < 0).sum())} per-sample losses are negative (batch positions {bad}, e.g. "
                             f"{float(ld.min()):.4g}); AdaPruner needs losses >= 0 (its selection term is -log L), so "
                             "pass the task loss itself (e.g. cross-entropy), not a log-likelihood or a shifted score")
    return losses


def check_number(value: Any, name: str) -> float:
    """``float(value)``, refusing non-numbers, NaN and infinity with a one-sentence PruneDataError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PruneDataError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise PruneDataError(f"{name} must be a finite number, got {value!r}")
    return v
