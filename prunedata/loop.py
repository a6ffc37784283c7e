"""One training recipe and one training loop, behind every place that trains a model.

:class:`Recipe` says how a model is trained; :func:`train` runs it and owns the data loader, optimiser,
schedule, seeding, progress, checkpoints and timing. What differs between callers (``training.fit``,
AdaPruner joint training, the baselines' proxy training, every run of ``prunedata.evaluate``) goes
through a small set of hooks (:class:`TrainHook`). :func:`test` is the one evaluator.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .checkpoint import Checkpointer
from .errors import PruneDataError
from .progress import progress

logger = logging.getLogger(__name__)

__all__ = ["Recipe", "TrainHook", "Step", "Checkpointer", "train", "test", "seed_everything"]

SCHEDULES = ("cosine", "constant")


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


@dataclass
class Recipe:
    """How a model is trained: SGD (``momentum``, ``weight_decay``), ``lr`` under ``schedule``
    (``"cosine"`` over all steps, or ``"constant"``), ``epochs``, ``batch_size``, ``seed``.

    ``weight_decay`` is also the L2 term of the trained objective, so the influence method derives
    its Hessian damping from it. ``device`` and ``eval_batch_size`` say where and how :func:`test` runs.
    """

    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    device: str = "cpu"
    eval_batch_size: int = 1024
    schedule: str = "cosine"
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.epochs) < 1:
            raise PruneDataError(f"epochs must be >= 1, got {self.epochs}")
        if int(self.batch_size) < 1:
            raise PruneDataError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise PruneDataError(f"lr must be > 0, got {self.lr}")
        if not (self.weight_decay >= 0 and self.momentum >= 0):
            raise PruneDataError(f"momentum and weight_decay must be >= 0, got {self.momentum}, {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise PruneDataError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")

    def replace(self, **kw: Any) -> "Recipe":
        return dataclasses.replace(self, **kw)

    def as_dict(self) -> Dict[str, Any]:
        """The fields that decide a trained model (device included, seed and schedule only when they
        differ from the defaults: the form evaluation caches and result files have always used)."""
        d = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "momentum": self.momentum,
             "weight_decay": self.weight_decay, "device": self.device}
        if self.schedule != "cosine":
            d["schedule"] = self.schedule
        return d

    def optimizer(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Optional[Any]:
        if self.schedule == "constant":
            return None
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, total_steps))


@dataclass
class Step:
    """What a hook sees after each optimiser step (``logits`` detached)."""

    epoch: int                 # 0-based
    index: int                 # 1-based step within the epoch
    steps_per_epoch: int
    ids: Optional[torch.Tensor]
    logits: torch.Tensor
    targets: torch.Tensor
    loss: torch.Tensor


class TrainHook:
    """Override what you need. Time spent in hooks is not counted as training time."""

    def objective(self, logits: torch.Tensor, targets: torch.Tensor, ids: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The batch's loss; ``None`` leaves it to the next hook (default: mean cross-entropy)."""
        return None

    def before_epoch(self, epoch: int) -> None:
        pass

    def around_step(self, epoch: int, index: int) -> Any:
        """A context manager around one step (forward, backward, optimiser step and the hooks' after_step);
        ``None`` for none."""
        return None

    def after_step(self, step: Step) -> None:
        pass

    def after_epoch(self, epoch: int, model: torch.nn.Module) -> None:
        """``epoch`` is 1-based (the number of epochs done)."""

    def state_dict(self) -> Any:
        return None

    def load_state_dict(self, state: Any) -> None:
        pass


class Callbacks(TrainHook):
    """The callable form of the hooks (``on_batch(ids, logits, targets)``, ``on_epoch_end(epoch, model)``,
    ``state()`` / ``load_state(state)``)."""

    def __init__(self, on_batch=None, on_epoch_end=None, state=None, load_state=None):
        # each callable given replaces the base class's no-op
        if on_batch is not None:
            self.after_step = lambda step: on_batch(step.ids, step.logits, step.targets)
        if on_epoch_end is not None:
            self.after_epoch = on_epoch_end
        if state is not None:
            self.state_dict = state
        if load_state is not None:
            self.load_state_dict = load_state


def train(model: torch.nn.Module, dataset: Any, recipe: Recipe, *, hooks: Sequence[TrainHook] = (),
          with_ids: bool = False, num_workers: int = 0, checkpoint: Optional[Any] = None, resume: bool = False,
          checkpoint_recipe: Optional[Dict[str, Any]] = None, what: str = "training run",
          optimizer: Optional[torch.optim.Optimizer] = None, sampler: Any = None,
          checkpointer: Optional[Checkpointer] = None,
          stop_on_nan: bool = False, drop_singleton_batch: bool = False, seed_globals: str = "all",
          stop_after_epoch: Optional[int] = None, show_progress: bool = True, desc: str = "train",
          log: Optional[logging.Logger] = None) -> Dict[str, Any]:
    """Train ``model`` (from its current state) on ``dataset`` with ``recipe``; returns
    ``{"seconds": training wall time without hooks, "epochs_run": ..., "steps_per_epoch": ...}``.

    Batches are shuffled by a generator seeded with ``recipe.seed``; the global generators are seeded
    too (``seed_globals="all"``, or ``"torch"`` for torch and numpy only) unless the run resumes.
    ``with_ids=True`` reads ``dataset`` through :class:`~prunedata.identity.IndexedDataset`, so hooks get
    each batch's sample indices. With ``checkpoint`` the model, optimiser, schedule, shuffling generator,
    RNG state and the hooks' state are written atomically after every epoch under ``checkpoint_recipe``
    (a dict naming the run); ``resume=True`` continues from there (a checkpoint of another recipe is
    refused) and ends where an uninterrupted run would. ``stop_after_epoch=k`` ends the run after its
    epoch ``k`` (counted from the run's start), once that epoch's checkpoint is written, so that a
    preemptible or time-sliced job can continue later with ``resume=True``. ``stop_on_nan`` turns a
    non-finite loss into an error; ``drop_singleton_batch`` drops a last batch of one sample (it breaks
    batch norm). ``log`` is the caller's logger (messages such as "resumed ..." are the caller's news).
    ``optimizer`` replaces the recipe's SGD (the schedule still follows the recipe); ``sampler`` the
    seeded shuffle (a hook then calls its ``set_epoch``); ``checkpointer`` the default checkpoint
    format (:class:`Checkpointer`).
    """
    from .identity import IndexedDataset

    device = recipe.device
    model.to(device)
    g = torch.Generator().manual_seed(recipe.seed)
    data = IndexedDataset(dataset) if with_ids else dataset
    drop_last = drop_singleton_batch and len(dataset) % recipe.batch_size == 1 and len(dataset) > 1
    order = {"sampler": sampler} if sampler is not None else {"shuffle": True, "generator": g}
    loader = DataLoader(data, batch_size=recipe.batch_size, num_workers=num_workers, drop_last=drop_last, **order)
    opt = optimizer if optimizer is not None else recipe.optimizer(model.parameters())
    steps_per_epoch = len(loader)
    sched = recipe.scheduler(opt, recipe.epochs * steps_per_epoch)
    if checkpointer is None and checkpoint is not None:
        checkpointer = Checkpointer(checkpoint, checkpoint_recipe or recipe.as_dict(), what)
    start = 0
    if resume and checkpointer is not None and checkpointer.exists():
        start, user_state = checkpointer.load(model, opt, sched, g)
        states = [user_state] if len(hooks) == 1 else (user_state or [None] * len(hooks))
        for h, s in zip(hooks, states):
            h.load_state_dict(s)
        (log or logger).info("resumed %s from %s at epoch %d of %d", desc, checkpointer.path, start, recipe.epochs)
    elif seed_globals == "all":
        seed_everything(recipe.seed)
    else:
        torch.manual_seed(recipe.seed)
        np.random.seed(recipe.seed % 2 ** 32)
    seconds, epochs_run = 0.0, 0
    for epoch in range(start, recipe.epochs):
        model.train()
        for h in hooks:
            h.before_epoch(epoch)
        t0 = time.perf_counter()
        bar = progress(loader, desc=f"{desc} epoch {epoch + 1}/{recipe.epochs}", disable=not show_progress)
        for index, batch in enumerate(bar, start=1):
            with contextlib.ExitStack() as stack:
                for h in hooks:
                    ctx = h.around_step(epoch, index)
                    if ctx is not None:
                        stack.enter_context(ctx)
                ids, (x, y) = batch if with_ids else (None, batch)
                x, y = x.to(device), torch.as_tensor(y).to(device)
                logits = model(x)
                loss = None
                for h in hooks:
                    loss = h.objective(logits, y, ids)
                    if loss is not None:
                        break
                if loss is None:
                    loss = F.cross_entropy(logits, y)
                if stop_on_nan and not torch.isfinite(loss):
                    raise PruneDataError(f"{desc} diverged (loss {float(loss)}) in epoch {epoch + 1}; lower the "
                                         "learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                if hooks:
                    seconds += time.perf_counter() - t0
                    st = Step(epoch, index, steps_per_epoch, torch.as_tensor(ids) if ids is not None else None,
                              logits.detach(), y, loss.detach())
                    for h in hooks:
                        h.after_step(st)
                    t0 = time.perf_counter()
        seconds += time.perf_counter() - t0
        epochs_run += 1
        for h in hooks:
            h.after_epoch(epoch + 1, model)
        if checkpointer is not None:
            states = [h.state_dict() for h in hooks]
            checkpointer.save(epoch + 1, model, opt, sched, g, states[0] if len(states) == 1 else (states or None))
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    return {"seconds": seconds, "epochs_run": epochs_run, "steps_per_epoch": steps_per_epoch}


@torch.no_grad()
def test(model: torch.nn.Module, dataset: Any, *, batch_size: int = 1024, device: Any = "cpu") -> Dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``dataset`` (eval mode; the model's mode is
    restored afterwards)."""
    was_training = model.training
    model.eval().to(device)
    correct, total, loss_sum = 0, 0, 0.0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        x, y = x.to(device), torch.as_tensor(y).to(device)
        out = model(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        total += int(y.numel())
    model.train(was_training)
    return {"accuracy": correct / max(total, 1), "loss": loss_sum / max(total, 1), "n": total}
