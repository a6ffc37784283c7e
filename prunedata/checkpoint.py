"""Checkpoint and resume of a whole pruning run: model, optimisers, mask, epoch and RNG state."""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from ._io import PathLike, atomic_torch_save
from .errors import PruneDataError

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


def rng_state() -> Dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: PathLike, *, epoch: int, model: Optional[torch.nn.Module] = None,
                    optimizer: Optional[torch.optim.Optimizer] = None, sampler: Any = None,
                    pruner: Any = None, scheduler: Any = None, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Atomically write everything needed to resume after ``epoch`` completed epochs."""
    state: Dict[str, Any] = {"version": CHECKPOINT_VERSION, "epoch": int(epoch), "rng": rng_state()}
    if model is not None:
        state["model"] = model.state_dict()
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if sampler is not None:
        state["sampler"] = sampler.state_dict()
    elif pruner is not None:
        state["pruner"] = pruner.state_dict()
    if extra:
        state["extra"] = extra
    path = atomic_torch_save(state, path)
    logger.info("checkpoint after epoch %d -> %s", epoch, path)
    return path


def _read_state(path: Path, map_location: Any = "cpu") -> Dict[str, Any]:
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise PruneDataError(f"cannot read checkpoint {path}: {e}. Delete it to start over.") from e
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise PruneDataError(f"{path} is not a prunedata checkpoint (version {CHECKPOINT_VERSION})")
    return state


def _restore(state: Dict[str, Any], *, model: Optional[torch.nn.Module] = None,
             optimizer: Optional[torch.optim.Optimizer] = None, sampler: Any = None, pruner: Any = None,
             scheduler: Any = None) -> int:
    if model is not None:
        model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    if sampler is not None:
        sampler.load_state_dict(state["sampler"])
    elif pruner is not None:
        pruner.load_state_dict(state["sampler"]["pruner"] if "sampler" in state else state["pruner"])
    set_rng_state(state["rng"])
    return int(state["epoch"])


def load_checkpoint(path: PathLike, *, model: Optional[torch.nn.Module] = None,
                    optimizer: Optional[torch.optim.Optimizer] = None, sampler: Any = None, pruner: Any = None,
                    scheduler: Any = None, map_location: Any = "cpu") -> int:
    """Restore the objects given and the RNG state; returns the epoch to continue from."""
    return _restore(_read_state(Path(path), map_location), model=model, optimizer=optimizer, sampler=sampler,
                    pruner=pruner, scheduler=scheduler)


def save_training_checkpoint(path: PathLike, recipe: Dict[str, Any], *, epoch: int, model: torch.nn.Module,
                             optimizer: torch.optim.Optimizer, scheduler: Any, generator: torch.Generator,
                             user_state: Any = None) -> Path:
    """Checkpoint of a plain training loop (:func:`prunedata.training.fit`, proxy training): model,
    optimiser, schedule, RNG, the shuffling generator, the run's ``recipe`` and the caller's state."""
    return save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                           extra={"recipe": recipe, "loader_generator": generator.get_state(),
                                  "user_state": user_state})


def resume_training(path: PathLike, recipe: Dict[str, Any], *, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, generator: torch.Generator,
                    what: str = "training run") -> tuple:
    """Counterpart of :func:`save_training_checkpoint` (one read of the file): refuses a checkpoint
    of another ``recipe``, restores everything and returns ``(epoch to continue from, user state)``."""
    path = Path(path)
    state = _read_state(path)
    extra = state.get("extra") or {}
    if extra.get("recipe") != recipe:
        raise PruneDataError(f"checkpoint {path} is from another {what} ({extra.get('recipe')}), not this one "
                             f"({recipe}); delete it or point --checkpoint elsewhere")
    epoch = _restore(state, model=model, optimizer=optimizer, scheduler=scheduler)
    generator.set_state(extra["loader_generator"])
    return epoch, extra.get("user_state")
