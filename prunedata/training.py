"""Plain training loops (AdaPruner joint training, fitting a fresh model, evaluation): conveniences for
the CLI, benchmarks and examples; the library's pieces (:class:`~prunedata.IndexedDataset`,
:class:`~prunedata.AdaPrunerSampler`) work in any loop."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ._io import PathLike
from .adapruner import AdaPruner, AdaPrunerSampler
from .checkpoint import AdaPrunerCheckpointer, adapruner_recipe, model_signature
from .loop import Recipe, Step, TrainHook, seed_everything, test, train  # noqa: F401 (seed_everything: re-exported)

logger = logging.getLogger(__name__)


def per_sample_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


def train_adapruner(model: torch.nn.Module, dataset: Any, pruner: AdaPruner, *,
                    optimizer: Optional[torch.optim.Optimizer] = None, batch_size: int = 256,
                    lr: float = 0.05, num_workers: int = 0, seed: int = 0, device: Any = "cpu",
                    loss_fn: Callable = per_sample_ce, checkpoint: Optional[PathLike] = None,
                    resume: bool = False, stop_after_epoch: Optional[int] = None,
                    show_progress: bool = True) -> AdaPrunerSampler:
    """Joint training of ``model`` and the mask of ``pruner`` on ``dataset`` (returns the sampler).

    With ``checkpoint`` the whole state (model, optimiser, mask and its optimiser, epoch, RNG) is
    written atomically after every epoch; ``resume=True`` continues from it, giving the same
    selection as an uninterrupted run. ``stop_after_epoch=k`` ends the run after its epoch ``k``
    (counted from the run's start), checkpoint written: a preemptible or time-sliced job continues
    later with ``resume=True``.
    """
    recipe = Recipe(epochs=pruner.epochs, batch_size=batch_size, lr=lr, seed=seed, device=str(device),
                    schedule="constant")
    model.to(device)
    optimizer = optimizer if optimizer is not None else recipe.optimizer(model.parameters())
    sampler = AdaPrunerSampler(pruner, seed=seed)
    key = adapruner_recipe(model, len(dataset), pruner, optimizer, batch_size=batch_size, seed=seed)
    train(model, dataset, recipe, hooks=[JointTraining(sampler, loss_fn)], with_ids=True, num_workers=num_workers,
          optimizer=optimizer, sampler=sampler, stop_after_epoch=stop_after_epoch, show_progress=show_progress,
          desc="adapruner", log=logger,
          checkpointer=AdaPrunerCheckpointer(checkpoint, key, sampler) if checkpoint is not None else None,
          resume=resume)
    return sampler


class JointTraining(TrainHook):
    """The AdaPruner part of joint training: the mask-weighted objective, a mask step after each
    optimiser step, the epoch's record (with its wall time) at the end of each epoch."""

    def __init__(self, sampler: AdaPrunerSampler, loss_fn: Callable):
        self.sampler, self.loss_fn, self.t0 = sampler, loss_fn, 0.0

    def objective(self, logits, targets, ids):
        return self.sampler.pruner.loss(ids, self.loss_fn(logits, targets))

    def before_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.t0 = time.perf_counter()

    def after_step(self, step: Step) -> None:
        self.sampler.pruner.step()

    def after_epoch(self, epoch: int, model: torch.nn.Module) -> None:
        self.sampler.pruner.end_epoch()["seconds"] = time.perf_counter() - self.t0


def fit(model: torch.nn.Module, dataset: Any, *, epochs: int = 2, batch_size: int = 128, lr: float = 0.05,
        seed: int = 0, device: Any = "cpu", num_workers: int = 0, show_progress: bool = True,
        desc: str = "train", checkpoint: Optional[PathLike] = None, resume: bool = False,
        stop_after_epoch: Optional[int] = None) -> torch.nn.Module:
    """Train ``model`` from its current state on ``dataset`` with SGD + cosine schedule
    (:class:`~prunedata.loop.Recipe`, run by :func:`prunedata.loop.train`).

    With ``checkpoint`` the model, optimiser, schedule, shuffling generator and RNG state are written
    atomically after every epoch; ``resume=True`` continues from it (a finished run is not trained
    again) and ends with the same weights as an uninterrupted run. A checkpoint of another recipe or
    dataset size is refused. ``stop_after_epoch=k`` ends the run after its epoch ``k``, checkpoint
    written, for a preemptible or time-sliced job to continue later with ``resume=True``.
    """
    recipe = Recipe(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=str(device))
    key = {"job": desc, "epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr), "seed": int(seed),
           "samples": len(dataset), **model_signature(model)}
    train(model, dataset, recipe, num_workers=num_workers, checkpoint=checkpoint, resume=resume,
          checkpoint_recipe=key, stop_after_epoch=stop_after_epoch, show_progress=show_progress, desc=desc, log=logger)
    return model


evaluate = test  # accuracy and mean cross-entropy of a model on a dataset (the name the CLI and examples use)


@torch.no_grad()
def per_sample_losses(model: torch.nn.Module, dataset: Any, *, batch_size: int = 1024, device: Any = "cpu") -> np.ndarray:
    """Unreduced cross-entropy of every sample, in dataset order (the model is left in eval mode)."""
    model.eval().to(device)
    out = []
    for x, y in DataLoader(dataset, batch_size=batch_size):
        out.append(F.cross_entropy(model(x.to(device)), y.to(device), reduction="none").cpu())
    return torch.cat(out).numpy()
