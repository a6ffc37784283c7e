"""Checkpoint and resume of a whole pruning run: model, optimisers, mask, epoch and RNG state."""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from ._io import PathLike, atomic_torch_save
from .errors import CheckpointError, RecipeMismatchError

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
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "sampler": sampler,
             "pruner": pruner if sampler is None else None}  # the sampler's state holds its pruner's
    state.update({key: obj.state_dict() for key, obj in parts.items() if obj is not None})
    if extra:
        state["extra"] = extra
    path = atomic_torch_save(state, path)
    logger.info("checkpoint after epoch %d -> %s", epoch, path)
    return path


def _read_state(path: Path, map_location: Any = "cpu") -> Dict[str, Any]:
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path} ({first}); it is damaged or not a checkpoint: "
                              "delete it to start over") from e
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} is not a prunedata checkpoint (version {CHECKPOINT_VERSION}); point "
                              "--checkpoint at another file or delete it")
    return state


def _flat(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix or "recipe": d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flat(v, key) if isinstance(v, dict) else {key: v})
    return out


def check_recipe(path: PathLike, found: Optional[Dict[str, Any]], recipe: Dict[str, Any], what: str = "run") -> None:
    """Refuse (:class:`RecipeMismatchError`, naming the differing fields) a checkpoint whose recorded
    recipe is not ``recipe``."""
    if found == recipe:
        return
    hint = ("resume with the checkpoint's settings, or delete it (or point --checkpoint elsewhere) to start over")
    if not isinstance(found, dict):
        raise RecipeMismatchError(f"checkpoint {path} was not written by a {what} (it records no recipe of one); "
                                  f"{hint}")
    job_a, job_b = found.get("job"), recipe.get("job")
    if job_a != job_b:
        raise RecipeMismatchError(f"checkpoint {path} was written by {job_a or 'another job'}, not by this "
                                  f"{job_b or what}; {hint}")
    a, b = _flat(found), _flat(recipe)
    diffs = [f"{k}: {a.get(k, '(missing)')!r} in the checkpoint, {b.get(k, '(missing)')!r} now"
             for k in sorted(set(a) | set(b), key=lambda k: (list(b).index(k) if k in b else len(b), k))
             if a.get(k, "\0missing") != b.get(k, "\0missing")]
    raise RecipeMismatchError(f"checkpoint {path} is from another {what} ({'; '.join(diffs)}); {hint}")


def model_signature(model: torch.nn.Module) -> Dict[str, Any]:
    """Class name and parameter count of ``model`` (what a recipe records to recognise it)."""
    return {"model": type(model).__name__, "model_parameters": int(sum(p.numel() for p in model.state_dict().values()
                                                                        if torch.is_tensor(p)))}


def _restore(state: Dict[str, Any], *, model: Optional[torch.nn.Module] = None,
             optimizer: Optional[torch.optim.Optimizer] = None, sampler: Any = None, pruner: Any = None,
             scheduler: Any = None, path: Any = "checkpoint") -> int:
    try:
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
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        if isinstance(e, ValueError) and type(e).__module__.startswith("prunedata"):  # prunedata's errors pass through
            raise
        what = f"the entry {e}" if isinstance(e, KeyError) else (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"checkpoint {path} does not fit this run ({what}): it was written for another model, "
                              "method or optimiser; delete it (or point --checkpoint elsewhere) to start over") from e
    return int(state["epoch"])


def load_checkpoint(path: PathLike, *, model: Optional[torch.nn.Module] = None,
                    optimizer: Optional[torch.optim.Optimizer] = None, sampler: Any = None, pruner: Any = None,
                    scheduler: Any = None, map_location: Any = "cpu", recipe: Optional[Dict[str, Any]] = None,
                    what: str = "run") -> int:
    """Restore the objects given and the RNG state; returns the epoch to continue from. With
    ``recipe``, a checkpoint written with another recipe (``extra["recipe"]``) is refused first."""
    state = _read_state(Path(path), map_location)
    if recipe is not None:
        found = (state.get("extra") or {}).get("recipe")
        if found is None and "sampler" in state and recipe.get("job") == "adapruner":
            logger.warning("checkpoint %s records no recipe (an older prunedata wrote it): its settings cannot be "
                           "checked against this run's", path)
        else:
            check_recipe(path, found, recipe, what)
    return _restore(state, model=model, optimizer=optimizer, sampler=sampler, pruner=pruner, scheduler=scheduler,
                    path=path)


def adapruner_recipe(model: torch.nn.Module, num_samples: int, pruner: Any, optimizer: torch.optim.Optimizer, *,
                     batch_size: int, seed: int) -> Dict[str, Any]:
    """What an AdaPruner training run's checkpoint must agree on to be resumed: model, dataset size,
    batch size, seed, optimiser and its learning rate, and every AdaPruner parameter (keep ratio, ...)."""
    opt = {k: v for k, v in optimizer.defaults.items() if isinstance(v, (bool, int, float, str))}
    return {"job": "adapruner", **model_signature(model), "samples": int(num_samples), "batch_size": int(batch_size),
            "seed": int(seed), "lr": float(optimizer.param_groups[0]["lr"]), "optimizer": type(optimizer).__name__,
            "optimizer_settings": opt, "pruner": dict(pruner.params())}


class Checkpointer:
    """How :func:`prunedata.loop.train` writes and reads its checkpoint: the default holds the model,
    optimiser, schedule, shuffling generator, RNG state, the run's recipe (refused on resume when it
    differs) and the hooks' state."""

    def __init__(self, path: Any, recipe: Dict[str, Any], what: str = "training run"):
        self.path, self.recipe, self.what = path, recipe, what

    def exists(self) -> bool:
        return self.path is not None and Path(self.path).exists()

    def save(self, epoch: int, model, optimizer, scheduler, generator, hook_state: Any) -> None:
        save_checkpoint(self.path, model=model, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                        extra={"recipe": self.recipe, "loader_generator": generator.get_state(),
                               "user_state": hook_state})

    def load(self, model, optimizer, scheduler, generator) -> tuple:
        """``(epoch to continue from, the hooks' state)``, from one read of the file."""
        path = Path(self.path)
        state = _read_state(path)
        extra = state.get("extra") or {}
        check_recipe(path, extra.get("recipe"), self.recipe, self.what)
        epoch = _restore(state, model=model, optimizer=optimizer, scheduler=scheduler, path=path)
        generator.set_state(extra["loader_generator"])
        return epoch, extra.get("user_state")


class AdaPrunerCheckpointer(Checkpointer):
    """AdaPruner joint training's checkpoint: model, optimiser, the sampler with its mask, RNG and the
    run's recipe (:func:`adapruner_recipe`)."""

    def __init__(self, path: PathLike, recipe: Dict[str, Any], sampler: Any):
        super().__init__(path, recipe, "AdaPruner run")
        self.sampler = sampler

    def save(self, epoch, model, optimizer, scheduler, generator, hook_state) -> None:
        save_checkpoint(self.path, model=model, optimizer=optimizer, sampler=self.sampler, epoch=epoch,
                        extra={"recipe": self.recipe})

    def load(self, model, optimizer, scheduler, generator) -> tuple:
        return load_checkpoint(self.path, model=model, optimizer=optimizer, sampler=self.sampler,
                               recipe=self.recipe, what=self.what), None
