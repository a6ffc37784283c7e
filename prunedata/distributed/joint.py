"""AdaPruner joint training under DDP: the one training loop (:func:`prunedata.loop.train`) with the
collective guards as a hook and rank 0's checkpoint (with every rank's RNG state)."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
import torch.distributed as dist

from .._io import PathLike
from ..adapruner import AdaPruner, AdaPrunerSampler
from ..checkpoint import AdaPrunerCheckpointer, adapruner_recipe, rng_state, save_checkpoint, set_rng_state
from ..errors import PruneDataError
from ..loop import Recipe, train
from ..training import JointTraining, per_sample_ce
from .collectives import DistributedError, all_gather_object, collective_guard, get_rank, get_world_size, is_distributed, run_on_main

logger = logging.getLogger(__name__)


class DistributedAdaPruner(AdaPruner):
    """Deprecated name of ``AdaPruner(..., process_group=...)`` (default ``"world"``): one mask shared by
    the ranks. Kept for one release; constructing one emits a ``DeprecationWarning``."""

    def __init__(self, num_samples: int, keep_ratio: float, *, process_group: Any = None,
                 sync_tolerance: float = 1e-3, **kw: Any):
        warnings.warn("DistributedAdaPruner is deprecated and will be removed in the next release; use "
                      "AdaPruner(..., process_group='world') (the one mask object)", DeprecationWarning, stacklevel=2)
        super().__init__(num_samples, keep_ratio, process_group="world" if process_group is None else process_group,
                         sync_tolerance=sync_tolerance, **kw)

    @classmethod
    def from_pruner(cls, pruner: AdaPruner, **kw: Any) -> "DistributedAdaPruner":
        """A distributed copy of an existing :class:`AdaPruner` (same parameters and state)."""
        if isinstance(pruner, DistributedAdaPruner) and not kw:
            return pruner
        new = cls(pruner.num_samples, device=pruner.mask.device, **pruner.params(), **kw)
        new.load_state_dict(pruner.state_dict())
        return new


def _resume_hint(checkpoint: Optional[PathLike]) -> str:
    if checkpoint is None:
        return "Pass checkpoint=... to train_adapruner_ddp to be able to resume after a failure"
    if Path(checkpoint).exists():
        return f"Restart all ranks with resume=True (--resume) to continue from the last checkpoint {checkpoint}"
    return f"No checkpoint was written yet ({checkpoint}); restart all ranks to begin again"


def train_adapruner_ddp(model: torch.nn.Module, dataset: Any, pruner: AdaPruner, *,
                        optimizer: Optional[torch.optim.Optimizer] = None, batch_size: int = 256,
                        lr: float = 0.05, num_workers: int = 0, seed: int = 0, device: Any = None,
                        loss_fn: Callable = per_sample_ce, checkpoint: Optional[PathLike] = None,
                        resume: bool = False, stop_after_epoch: Optional[int] = None,
                        show_progress: bool = True, on_step: Optional[Callable[[int, int], None]] = None,
                        ddp_kwargs: Optional[Dict[str, Any]] = None) -> AdaPrunerSampler:
    """Joint training of ``model`` and ``pruner``'s mask with DDP across the ranks of the process group.

    Call on every rank with the same arguments (after :func:`init_distributed`). ``batch_size`` is per
    rank: ``K`` ranks with ``batch_size=B`` take the same optimisation steps as one process with
    ``batch_size=K*B`` (:func:`prunedata.training.train_adapruner`) when ``len(dataset)`` is a multiple
    of ``K`` (otherwise the sampler pads the last shard with repeated samples). With more than one
    rank, ``pruner`` must share its mask (``AdaPruner(..., process_group="world")``).

    ``checkpoint``: rank 0 writes the whole state (model, optimiser, mask, epoch, every rank's RNG)
    atomically after each epoch; ``resume=True`` makes every rank continue from it (the file must be
    on a filesystem all ranks see); ``stop_after_epoch=k`` ends the run after its epoch ``k``,
    checkpoint written, for a preemptible or time-sliced job to continue later with ``resume=True``.
    ``on_step(epoch, step)`` is called before each step (logging, fault injection in tests). Returns
    the sampler; ``sampler.pruner.selection(dataset)`` is identical on every rank; write it with
    :func:`save_selection`. Without a process group this is an ordinary single-process loop.
    """
    world, rank = get_world_size(), get_rank()
    if world > 1 and pruner.world_size <= 1:
        raise PruneDataError(f"this AdaPruner keeps a separate mask on each of the {world} ranks, which would drift "
                             "apart. Build it with AdaPruner(..., process_group='world') so the ranks share one mask "
                             "(DistributedAdaPruner, its deprecated name, does the same)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PruneDataError(f"batch_size (per rank) must be a positive int, got {batch_size!r}")
    if len(dataset) != pruner.num_samples:
        raise PruneDataError(f"the pruner has {pruner.num_samples} mask entries but the dataset has {len(dataset)} "
                             "samples")
    if device is None:
        device = f"cuda:{torch.cuda.current_device()}" if (is_distributed() and dist.get_backend() == "nccl") else "cpu"
    device = torch.device(device)
    if world > 1 and len(dataset) % world:
        logger.warning("%d samples do not split evenly over %d ranks: the sampler repeats %d samples per epoch",
                       len(dataset), world, world - len(dataset) % world)
    recipe = Recipe(epochs=pruner.epochs, batch_size=batch_size, lr=lr, seed=seed, device=str(device),
                    schedule="constant")
    model.to(device)
    optimizer = optimizer if optimizer is not None else recipe.optimizer(model.parameters())
    sampler = AdaPrunerSampler(pruner, seed=seed, num_replicas=world, rank=rank)
    key = adapruner_recipe(model, len(dataset), pruner, optimizer, batch_size=batch_size, seed=seed)
    ckpt = _DDPCheckpointer(checkpoint, key, sampler, model, world) if checkpoint is not None else None
    if resume and ckpt is not None and not ckpt.exists():
        logger.info("no checkpoint at %s yet: starting from epoch 0", checkpoint)
    net: torch.nn.Module = model
    if world > 1:
        with collective_guard("wrapping the model in DistributedDataParallel"):
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, **(ddp_kwargs or {}))
    train(net, dataset, recipe, hooks=[_DDPJointTraining(sampler, loss_fn, checkpoint, on_step)], with_ids=True,
          num_workers=num_workers, optimizer=optimizer, sampler=sampler, checkpointer=ckpt, resume=resume,
          stop_after_epoch=stop_after_epoch, show_progress=show_progress and rank == 0, desc="adapruner", log=logger)
    return sampler


class _DDPJointTraining(JointTraining):
    """Joint training under DDP: each step and the end of each epoch run under a collective guard
    (a dead rank fails the others with a hint how to resume); ``on_step(epoch, step)`` before each step."""

    def __init__(self, sampler: AdaPrunerSampler, loss_fn: Callable, checkpoint: Optional[PathLike],
                 on_step: Optional[Callable[[int, int], None]]):
        super().__init__(sampler, loss_fn)
        self.checkpoint, self.on_step = checkpoint, on_step

    def around_step(self, epoch: int, index: int) -> Any:
        if self.on_step is not None:
            self.on_step(epoch, index - 1)
        return collective_guard(f"epoch {epoch}, step {index - 1} (forward/backward with the DDP gradient "
                                "all-reduce, mask update)", _resume_hint(self.checkpoint))

    def after_epoch(self, epoch: int, model: torch.nn.Module) -> None:
        with collective_guard(f"end of epoch {epoch - 1}", _resume_hint(self.checkpoint)):
            super().after_epoch(epoch, model)


class _DDPCheckpointer(AdaPrunerCheckpointer):
    """Rank 0 writes model, optimiser, mask, epoch and every rank's RNG state; every rank resumes from it."""

    def __init__(self, path: PathLike, recipe: Dict[str, Any], sampler: AdaPrunerSampler, model: torch.nn.Module,
                 world: int):
        super().__init__(path, recipe, sampler)
        self.model, self.world = model, world  # the model itself, not its DDP wrapper

    def exists(self) -> bool:
        here = Path(self.path).exists()
        found = all_gather_object(here, what="checking the checkpoint on every rank")
        if any(found) and not all(found):
            raise DistributedError(f"checkpoint {self.path} exists on ranks {[i for i, f in enumerate(found) if f]} "
                                   f"but not on {[i for i, f in enumerate(found) if not f]}: put it on a filesystem "
                                   "that every rank sees")
        return here

    def save(self, epoch, model, optimizer, scheduler, generator, hook_state) -> None:
        rngs = all_gather_object(rng_state(), what=f"gathering RNG states for the checkpoint of epoch {epoch - 1}")
        run_on_main(save_checkpoint, self.path, model=self.model, optimizer=optimizer, sampler=self.sampler,
                    epoch=epoch, extra={"world_size": self.world, "rng_per_rank": rngs, "recipe": self.recipe},
                    what=f"write the checkpoint {self.path}")

    def load(self, model, optimizer, scheduler, generator) -> tuple:
        start, _ = super().load(self.model, optimizer, scheduler, generator)
        extra = torch.load(self.path, map_location="cpu", weights_only=False).get("extra") or {}
        world, rank = get_world_size(), get_rank()
        rngs = extra.get("rng_per_rank")
        if rngs and len(rngs) == world:
            set_rng_state(rngs[rank])
        elif world > 1 or extra.get("world_size", 1) != world:
            logger.warning("checkpoint %s was written by %s ranks, now %d: RNG streams restart from rank 0's",
                           self.path, extra.get("world_size", "?"), world)
        starts = all_gather_object(start, what="checking that every rank resumed at the same epoch")
        if len(set(starts)) != 1:
            raise DistributedError(f"ranks resumed from different epochs {starts}: the checkpoint {self.path} changed "
                                   "while being read; restart all ranks")
        logger.info("rank %d resumed from %s at epoch %d", rank, self.path, start)
        return start, None
