"""AdaPruner inside Detectron2 training.

Two ways in, both a few lines:

``DefaultTrainer`` users swap the class::

    trainer = AdaPrunerTrainer(cfg, keep_ratio=0.8, warmup_epochs=2)   # cfg.DATASETS.TRAIN = ("voc_train",)
    trainer.resume_or_load(resume=False)
    trainer.train()                      # writes OUTPUT_DIR/adapruner_selection.json at the end
    register_pruned("voc_train", trainer.selection_path)   # -> "voc_train_pruned"

``SimpleTrainer`` users swap the step::

    pruner = AdaPruner(len(dicts), keep_ratio=0.8, epochs=10, warmup_epochs=2)
    trainer = AdaPrunerSimpleTrainer(model, data_loader, optimizer, pruner, epoch_length=len(dicts))
    trainer.train(0, max_iter)
    detection_selection(pruner, dicts, "voc_train").save("selection.json")

Each step: the batch's dataset indices come from the records themselves (``prunedata_index``,
copied through the dataset mapper), per-image losses from :func:`per_image_losses`, and the loss
that is back-propagated is AdaPruner's ``mean_i(w_i * l_i)`` plus its mask terms. The schedule
(warm-up, alpha ramp) is per epoch; Detectron2 counts iterations, so the epoch is
``iteration * images_per_batch // epoch_length`` (Detectron2's ``TrainingSampler`` visits every
image once per ``epoch_length`` images).

Resume. The pruner's state (mask, its optimiser, schedule position, the epoch's statistics), the
SGD optimiser's state, the RNG states and the data stream's seed go into Detectron2's own checkpoints
(``model_XXXXXXX.pth``/``model_final.pth``, under the ``trainer`` entry; Detectron2 0.6's
``DefaultTrainer`` itself saves only the iteration and hook states), so
``AdaPrunerTrainer(...).resume_or_load(resume=True)`` continues the mask where the checkpoint left it
and, with the data stream resumed at the same image (``DATALOADER.NUM_WORKERS = 0``), ends with the
selection of an uninterrupted run. A checkpoint of another recipe (dataset, keep ratio or other
AdaPruner parameter, images per batch, learning rate, seed, loss mode) is refused with the field named.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch

from prunedata.adapruner import AdaPruner
from prunedata._io import atomic_torch_save, atomic_write_text
from prunedata.checkpoint import check_recipe, rng_state, set_rng_state
from prunedata.errors import CheckpointError, PruneDataError
from prunedata.selection import Selection

from ._require import require_detectron2

require_detectron2()

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader  # noqa: E402
from detectron2.data.build import filter_images_with_only_crowd_annotations  # noqa: E402
from detectron2.data.samplers import TrainingSampler  # noqa: E402
from detectron2.engine import DefaultTrainer, SimpleTrainer  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from detectron2.utils.events import get_event_storage  # noqa: E402

from .datasets import INDEX_KEY, detection_fingerprint, index_records  # noqa: E402
from .losses import MODES, per_image_losses, resolve_mode  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["AdaPrunerSimpleTrainer", "AdaPrunerTrainer", "batch_indices", "detection_selection",
           "iterations_for_epochs"]


def batch_indices(batch: Sequence[Dict[str, Any]]) -> torch.Tensor:
    """Dataset indices of a mapped batch, read from each record's ``prunedata_index``."""
    out = []
    for pos, d in enumerate(batch):
        if INDEX_KEY not in d:
            raise PruneDataError(
                f"batch item {pos} (file {d.get('file_name', '?')}) has no {INDEX_KEY!r}: register the dataset "
                "with prunedata (register_voc/register_yolo/register_pruned) or run index_records() on its "
                "records, and use a dataset mapper that keeps unknown keys (Detectron2's DatasetMapper does)")
        out.append(int(d[INDEX_KEY]))
    return torch.tensor(out, dtype=torch.long)


def iterations_for_epochs(num_images: int, epochs: int, images_per_batch: int) -> int:
    """``SOLVER.MAX_ITER`` that covers ``epochs`` passes over ``num_images`` images."""
    return int(math.ceil(epochs * num_images / images_per_batch))


def detection_selection(pruner: AdaPruner, records: Sequence[Dict[str, Any]], dataset_name: Optional[str] = None,
                        *, extra_params: Optional[Dict[str, Any]] = None) -> Selection:
    """The pruner's binarised mask as a selection of ``records`` (the registered dataset list).

    ``kept`` are indices into ``records``; ``fingerprint`` is :func:`detection_fingerprint`;
    ``extra`` carries ``image_ids`` and ``file_names`` of the kept images (file names relative to
    the dataset root when the records lie under it) plus the dataset name and root.
    """
    if len(records) != pruner.num_samples:
        raise PruneDataError(f"pruner has {pruner.num_samples} mask entries but the dataset has {len(records)} records")
    params = {"task": "detection"}
    if dataset_name:
        params["dataset"] = dataset_name
    params.update(extra_params or {})
    sel = pruner.selection(None, fingerprint=detection_fingerprint(records), extra_params=params)
    root = MetadataCatalog.get(dataset_name).get("prunedata_root") if dataset_name in MetadataCatalog.list() else None

    def rel(fn: str) -> str:
        if root:
            try:
                return Path(fn).resolve().relative_to(Path(root)).as_posix()
            except ValueError:
                pass
        return str(fn)

    kept = sel.kept.tolist()
    sel.extra.update(dataset=dataset_name, root=root, image_ids=[records[i].get("image_id") for i in kept],
                     file_names=[rel(records[i].get("file_name", "")) for i in kept])
    never = sel.metrics["never_seen"]
    if never:
        logger.warning("AdaPruner: %d of %d images were never seen in training (filtered out, or too few "
                       "iterations); their mask stayed at its initial value", never, pruner.num_samples)
    return sel


class AdaPrunerSimpleTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose step weights each image's detection loss by AdaPruner's mask.

    Parameters
    ----------
    model, data_loader, optimizer: as for ``SimpleTrainer``; every batch item must carry
        ``prunedata_index`` (see :func:`batch_indices`).
    pruner: the :class:`~prunedata.adapruner.AdaPruner` (one mask entry per registered record).
    epoch_length: images per epoch (default ``pruner.num_samples``; smaller when Detectron2 filters
        images without annotations).
    images_per_batch: images per iteration over all processes (default: the first batch's size).
    loss_mode: "auto", "heads" or "microbatch" (see :func:`per_image_losses`).
    """

    def __init__(self, model, data_loader, optimizer, pruner: AdaPruner, *, epoch_length: Optional[int] = None,
                 images_per_batch: Optional[int] = None, loss_mode: str = "auto"):
        if not isinstance(pruner, AdaPruner):
            raise PruneDataError(f"pruner must be a prunedata AdaPruner, got {type(pruner).__name__}")
        if loss_mode not in MODES:
            raise PruneDataError(f"loss_mode must be one of {MODES}, got {loss_mode!r}")
        if isinstance(model, torch.nn.parallel.DistributedDataParallel) or comm.get_world_size() > 1:
            raise PruneDataError("AdaPruner detection training runs in one process for now: the per-image losses "
                                 "bypass DistributedDataParallel's forward, and the mask gradient is not all-reduced")
        super().__init__(model, data_loader, optimizer)
        self.pruner = pruner
        self.epoch_length = int(epoch_length or pruner.num_samples)
        if self.epoch_length <= 0:
            raise PruneDataError(f"epoch_length must be positive, got {epoch_length}")
        self.images_per_batch = int(images_per_batch) if images_per_batch else None
        self.loss_mode = loss_mode
        self.mode_used: Optional[str] = None  #: the per-image loss mode "auto" resolved to (set at the first step)
        self.last_losses = None

    def sync_epoch(self, iteration: int) -> None:
        """End pruner epochs until it reaches the epoch that iteration ``iteration`` falls in."""
        if not self.images_per_batch:
            return
        target = (int(iteration) * self.images_per_batch) // self.epoch_length
        while self.pruner.epoch < target:
            self.pruner.end_epoch()

    def run_step(self):
        assert self.model.training, "[AdaPrunerSimpleTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self.images_per_batch is None:
            self.images_per_batch = len(data) * comm.get_world_size()
        self.sync_epoch(self.iter)
        ids = batch_indices(data)
        if self.mode_used is None:
            self.mode_used = resolve_mode(self.model, self.loss_mode)
        out = per_image_losses(self.model, data, self.mode_used)
        total = self.pruner.loss(ids, out.losses)
        self.optimizer.zero_grad()
        total.backward()
        self._write_metrics(out.batch_loss_dict(), data_time)
        self._write_pruner_metrics(float(total.detach()))
        self.optimizer.step()
        self.pruner.step()
        self.last_losses = out

    def _write_pruner_metrics(self, total: float) -> None:
        if not comm.is_main_process():
            return
        terms = {f"adapruner/{k}": float(v) for k, v in self.pruner.last_terms.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
        terms["adapruner/epoch"] = float(self.pruner.epoch)
        terms["adapruner/objective"] = total
        get_event_storage().put_scalars(**terms, smoothing_hint=False)

    def after_train(self):
        super().after_train()
        self.sync_epoch(self.iter)

    def state_dict(self):
        ret = super().state_dict()
        ret["adapruner"] = _plain(self.pruner.state_dict())
        # the running statistics of the epoch in progress (Detectron2 checkpoints fall mid-epoch)
        ret["adapruner_epoch_stats"] = _plain({k: v.detach().clone() if torch.is_tensor(v) else v
                                               for k, v in vars(self.pruner._epoch_stats).items()})
        return ret

    def load_state_dict(self, state_dict):
        if "adapruner" not in state_dict:
            raise CheckpointError(
                "this Detectron2 checkpoint holds no AdaPruner state (another trainer wrote it): resume it with "
                "the trainer that wrote it, or start AdaPruner training from its weights with resume=False")
        super().load_state_dict(state_dict)
        self.pruner.load_state_dict(state_dict["adapruner"])
        for k, v in (state_dict.get("adapruner_epoch_stats") or {}).items():
            setattr(self.pruner._epoch_stats, k, v)


class AdaPrunerTrainer(DefaultTrainer):
    """``DefaultTrainer`` that learns an AdaPruner mask over ``cfg.DATASETS.TRAIN`` (one dataset).

    ``epochs`` defaults to what ``SOLVER.MAX_ITER`` covers (``MAX_ITER * IMS_PER_BATCH // images``);
    when given, ``MAX_ITER`` must cover it. Other keyword arguments go to
    :class:`~prunedata.adapruner.AdaPruner` (``warmup_epochs``, ``alpha_init``, ``alpha_final``,
    ``scale``, ``tolerance``, ``mask_lr``, ...). After training the selection is written to
    ``selection_path`` (default ``OUTPUT_DIR/adapruner_selection.json``) -- only when training ran to
    ``MAX_ITER`` (a run stopped by an error writes none; resume it). With ``cfg.SEED >= 0`` the global
    RNGs are seeded from it before the model is built (as ``default_setup`` does), and the data stream's
    shuffling uses it. ``loss_mode``: see :func:`~prunedata.adapters.detectron2.losses.resolve_mode`;
    the selection records the mode used (``params["loss_mode"]``) and the one asked for
    (``params["loss_mode_requested"]``).
    """

    def __init__(self, cfg, keep_ratio: float, *, epochs: Optional[int] = None, loss_mode: str = "auto",
                 selection_path: Union[None, str, os.PathLike] = None, **pruner_kwargs):
        names = list(cfg.DATASETS.TRAIN)
        if len(names) != 1:
            raise PruneDataError(f"AdaPrunerTrainer prunes one dataset; cfg.DATASETS.TRAIN has {len(names)}: {names}. "
                                 "Register their union as one dataset first")
        if cfg.SOLVER.AMP.ENABLED:
            raise PruneDataError("AdaPrunerTrainer does not support SOLVER.AMP.ENABLED yet; turn AMP off")
        self.dataset_name = names[0]
        records = index_records([dict(d) for d in DatasetCatalog.get(self.dataset_name)])
        if not records:
            raise PruneDataError(f"dataset {self.dataset_name!r} is empty")
        self.records = records
        filtered = cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        self._train_records = used = filter_images_with_only_crowd_annotations(records) if filtered else records
        ims = int(cfg.SOLVER.IMS_PER_BATCH)
        if epochs is None:
            epochs = (int(cfg.SOLVER.MAX_ITER) * ims) // len(used)
            if epochs < 1:
                raise PruneDataError(f"SOLVER.MAX_ITER={cfg.SOLVER.MAX_ITER} x IMS_PER_BATCH={ims} is less than one "
                                     f"epoch of {len(used)} images; AdaPruner needs several epochs (set MAX_ITER to "
                                     f"iterations_for_epochs({len(used)}, epochs, {ims}))")
        else:
            need = iterations_for_epochs(len(used), int(epochs), ims)
            if int(cfg.SOLVER.MAX_ITER) < need:
                raise PruneDataError(f"epochs={epochs} over {len(used)} images at IMS_PER_BATCH={ims} needs "
                                     f"SOLVER.MAX_ITER >= {need}, but it is {cfg.SOLVER.MAX_ITER}")
        self.pruner = AdaPruner(len(records), keep_ratio, epochs=int(epochs), **pruner_kwargs)
        self.loss_mode = loss_mode
        self._sampler = _ResumableSampler(len(used), int(cfg.SEED) if int(cfg.SEED) >= 0 else None)
        self._recipe = {"job": "adapruner detectron2", "dataset": self.dataset_name,
                        "fingerprint": detection_fingerprint(records), "images": len(used), "ims_per_batch": ims,
                        "base_lr": float(cfg.SOLVER.BASE_LR), "seed": int(cfg.SEED), "loss_mode": loss_mode,
                        "pruner": dict(self.pruner.params())}
        self.selection_path = Path(selection_path) if selection_path else Path(cfg.OUTPUT_DIR) / "adapruner_selection.json"
        if int(cfg.SEED) >= 0:  # as detectron2's default_setup: the model's initialisation follows cfg.SEED
            seed_all_rng(int(cfg.SEED))
        super().__init__(cfg)
        if type(self.checkpointer) is DetectionCheckpointer:  # same object the hooks hold, now writing atomically
            self.checkpointer.__class__ = AtomicDetectionCheckpointer
        old = self._trainer
        self._trainer = AdaPrunerSimpleTrainer(old.model, old.data_loader, old.optimizer, self.pruner,
                                               epoch_length=len(used), images_per_batch=ims, loss_mode=loss_mode)

    def build_train_loader(self, cfg):  # instance method: uses the indexed records
        return build_detection_train_loader(cfg, dataset=self._train_records, sampler=self._sampler)

    def state_dict(self):
        ret = super().state_dict()
        if "_trainer" not in ret:  # Detectron2 0.6's DefaultTrainer saves no optimiser and no inner trainer
            ret["_trainer"] = self._trainer.state_dict()
        ret["prunedata"] = _plain({"recipe": self._recipe, "rng": rng_state(), "data_seed": self._sampler.seed})
        return ret

    def load_state_dict(self, state_dict):
        meta = state_dict.get("prunedata")
        if meta is None or "_trainer" not in state_dict:
            raise CheckpointError(
                "this Detectron2 checkpoint holds no AdaPruner state (another trainer, or an older prunedata, "
                "wrote it): resume it with the trainer that wrote it, or load its weights with resume=False")
        check_recipe("(Detectron2 checkpoint)", meta.get("recipe"), self._recipe, "AdaPruner detection run")
        super().load_state_dict(state_dict)
        if "state_dict" not in DefaultTrainer.__dict__:  # newer Detectron2 restores _trainer itself
            self._trainer.load_state_dict(state_dict["_trainer"])
        self._sampler.seed = meta["data_seed"]
        self._sampler.start = (int(state_dict["iteration"]) + 1) * int(self._recipe["ims_per_batch"])
        self._restart_data()
        rng = dict(meta["rng"])
        name, keys, *rest = rng["numpy"]
        rng["numpy"] = (name, np.asarray(keys.numpy() if torch.is_tensor(keys) else keys, dtype=np.uint32), *rest)
        set_rng_state(rng)

    def _restart_data(self) -> None:
        """A fresh iterator over the (now resumed) data stream; the global RNG is left as it was."""
        t = self._trainer
        state = torch.get_rng_state()
        if hasattr(t, "_data_loader_iter_obj"):  # newer Detectron2 makes the iterator lazily
            t._data_loader_iter_obj = None
        else:
            t._data_loader_iter = iter(t.data_loader)
        torch.set_rng_state(state)

    def after_train(self):
        super().after_train()
        if self.iter + 1 < self.max_iter:  # stopped by an error: the mask is unfinished, write nothing
            logger.warning("AdaPruner training stopped at iteration %d of %d: no selection written; resume from the "
                           "last checkpoint with resume_or_load(resume=True)", self.iter + 1, self.max_iter)
            return
        self._trainer.sync_epoch(self.iter)
        if comm.is_main_process():
            self.selection().save(self.selection_path)
            logger.info("AdaPruner selection written to %s", self.selection_path)

    def selection(self) -> Selection:
        """The current binarised selection over the registered dataset list."""
        used = self._trainer.mode_used or resolve_mode(self._trainer.model, self.loss_mode)
        return detection_selection(self.pruner, self.records, self.dataset_name,
                                   extra_params={"loss_mode": used, "loss_mode_requested": self.loss_mode})


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose checkpoint files and ``last_checkpoint`` tag are written atomically
    on local disks (temporary file, fsync, rename): a process killed while saving leaves the previous
    checkpoint in charge, never a truncated one (remote ``save_dir`` URLs use Detectron2's own writer)."""

    def _local(self) -> bool:
        return bool(self.save_dir) and "://" not in str(self.save_dir)

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_to_disk or not self._local():
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict(), **{k: obj.state_dict() for k, obj in self.checkpointables.items()},
                **kwargs}
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        atomic_torch_save(data, path)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._local():
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)


def _plain(obj: Any) -> Any:
    """``obj`` with numpy arrays as tensors and numpy scalars as Python numbers, so that Detectron2's
    checkpointer (``torch.load`` with ``weights_only=True`` under PyTorch >= 2.6) can read it back."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.astype(np.int64) if obj.dtype == np.uint32 else obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [_plain(v) for v in obj]
        return out if isinstance(obj, list) else tuple(out)
    return obj


class _ResumableSampler(torch.utils.data.Sampler):
    """Detectron2's ``TrainingSampler`` (infinite shuffled stream, fixed seed) that can start at the
    ``start``-th index, so a resumed run reads the images an uninterrupted one would."""

    def __init__(self, size: int, seed: Optional[int]):
        self.size = int(size)
        self.seed = int(seed) if seed is not None else int(TrainingSampler(self.size)._seed)
        self.start = 0

    def __iter__(self):
        yield from itertools.islice(iter(TrainingSampler(self.size, shuffle=True, seed=self.seed)), self.start, None)
