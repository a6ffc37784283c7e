"""Plain training loops: AdaPruner joint training, fitting a fresh model, evaluation.

These are conveniences for the CLI, benchmarks and examples; the library's pieces
(:class:`~prunedata.IndexedDataset`, :class:`~prunedata.AdaPrunerSampler`) work in any loop.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ._io import PathLike
from .adapruner import AdaPruner, AdaPrunerSampler
from .checkpoint import adapruner_recipe, load_checkpoint, model_signature, save_checkpoint
from .identity import IndexedDataset
from .loop import Recipe, seed_everything, test, train
from .progress import progress

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
    selection as an uninterrupted run. ``stop_after_epoch=k`` stops after ``k`` epochs (testing).
    """
    model.to(device)
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sampler = AdaPrunerSampler(pruner, seed=seed)
    recipe = adapruner_recipe(model, len(dataset), pruner, optimizer, batch_size=batch_size, seed=seed)
    start = 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        start = load_checkpoint(checkpoint, model=model, optimizer=optimizer, sampler=sampler, recipe=recipe,
                                what="AdaPruner run")
        logger.info("resumed from %s at epoch %d", checkpoint, start)
    else:
        seed_everything(seed)
    loader = DataLoader(IndexedDataset(dataset), batch_size=batch_size, sampler=sampler,
                        num_workers=num_workers, persistent_workers=False)
    for epoch in range(start, pruner.epochs):
        sampler.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        bar = progress(loader, desc=f"adapruner epoch {epoch + 1}/{pruner.epochs}", disable=not show_progress)
        for idx, (x, y) in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = sampler.loss(idx, loss_fn(model(x), y))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sampler.step()
        rec = sampler.end_epoch()
        rec["seconds"] = time.perf_counter() - t0
        if checkpoint is not None:
            save_checkpoint(checkpoint, model=model, optimizer=optimizer, sampler=sampler, epoch=epoch + 1,
                            extra={"recipe": recipe})
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    return sampler


def fit(model: torch.nn.Module, dataset: Any, *, epochs: int = 2, batch_size: int = 128, lr: float = 0.05,
        seed: int = 0, device: Any = "cpu", num_workers: int = 0, show_progress: bool = True,
        desc: str = "train", checkpoint: Optional[PathLike] = None, resume: bool = False,
        stop_after_epoch: Optional[int] = None) -> torch.nn.Module:
    """Train ``model`` from its current state on ``dataset`` with SGD + cosine schedule
    (:class:`~prunedata.loop.Recipe`, run by :func:`prunedata.loop.train`).

    With ``checkpoint`` the model, optimiser, schedule, shuffling generator and RNG state are written
    atomically after every epoch; ``resume=True`` continues from it (a finished run is not trained
    again) and ends with the same weights as an uninterrupted run. A checkpoint of another recipe or
    dataset size is refused. ``stop_after_epoch=k`` stops after ``k`` epochs (testing).
    """
    recipe = Recipe(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=str(device))
    key = {"job": desc, "epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr), "seed": int(seed),
           "samples": len(dataset), **model_signature(model)}
    train(model, dataset, recipe, num_workers=num_workers, checkpoint=checkpoint, resume=resume,
          checkpoint_recipe=key, stop_after_epoch=stop_after_epoch, show_progress=show_progress, desc=desc, log=logger)
    return model


def evaluate(model: torch.nn.Module, dataset: Any, *, batch_size: int = 1024, device: Any = "cpu") -> Dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``dataset`` (:func:`prunedata.loop.test`)."""
    return test(model, dataset, batch_size=batch_size, device=device)


@torch.no_grad()
def per_sample_losses(model: torch.nn.Module, dataset: Any, *, batch_size: int = 1024, device: Any = "cpu") -> np.ndarray:
    model.eval().to(device)
    out = []
    for x, y in DataLoader(dataset, batch_size=batch_size):
        out.append(F.cross_entropy(model(x.to(device)), y.to(device), reduction="none").cpu())
    return torch.cat(out).numpy()
