"""AdaPruner on streams: the mask addressed by sample key."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
from webdataset.handlers import reraise_exception

from prunedata.adapruner import AdaPruner
from prunedata.errors import OptionError, PruneDataError, SelectionMismatchError
from prunedata.identity import keys_fingerprint
from prunedata.selection import Selection
from .ids import Handler, check_scheme, ids_of
from .manifest import ShardManifest, UrlsLike, load_manifest
from .reading import scan_shards
from .selections import annotate_selection

logger = logging.getLogger(__name__)


class KeyedAdaPruner(AdaPruner):
    """The AdaPruner of a stream: mask entries addressed by sample id (``__key__`` or ``shard/key``).

    An :class:`~prunedata.adapruner.AdaPruner` whose key table (:meth:`AdaPruner.use_keys`) holds the
    sorted ids (mask entry ``i`` is the ``i``-th id, as in keyed selections), so losses, schedule,
    binarisation and checkpoints are the map-style pruner's. It adds what streams need: ids from a
    manifest or the shards, ``shard/key`` ids from the batch's ``__url__``, a warning for a stream that
    repeats samples within an epoch, and keyed selections. Stream every sample each epoch (do not prune
    while learning the mask); mark epochs with :meth:`set_epoch` / :meth:`end_epoch`.

    >>> pruner = KeyedAdaPruner.from_shards(urls, keep_ratio=0.7, epochs=10)
    >>> ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node)
    >>> ds = ds.shuffle(1000).decode("pil").to_tuple("__key__", "png", "cls").map_tuple(None, tf, None)
    >>> loader = torch.utils.data.DataLoader(ds.batched(64), batch_size=None, num_workers=2)
    >>> for epoch in range(pruner.epochs):
    ...     pruner.set_epoch(epoch)
    ...     for keys, x, y in loader:
    ...         loss = pruner.loss(keys, F.cross_entropy(model(x), y, reduction="none"))
    ...         opt.zero_grad(); loss.backward(); opt.step(); pruner.step()
    ...     pruner.end_epoch()
    >>> pruner.selection().save("selection.json")

    Parameters: ``ids`` -- the full id set (a :class:`ShardManifest`, a path to one, or a sequence of
    ids); ``keep_ratio`` and ``**adapruner_kw`` build the ``AdaPruner``, or pass ``pruner=`` (an
    ``AdaPruner`` or subclass with one entry per id) to use your own. ``warn_repeats``: warn once when an
    id comes back within one epoch -- the sign of shards not split over DataLoader workers
    (``wds.split_by_worker``) or ranks, so that every worker streams every shard; set it to False for
    streams that sample with replacement (``resampled=True``).

    Resume: ``state_dict()`` / ``load_state_dict()`` hold the mask, its optimiser and schedule position
    (``prunedata.checkpoint.save_checkpoint(path, pruner=keyed, model=..., optimizer=..., epoch=...)``
    writes it with the model); restored, the run continues to the selection of an uninterrupted one.
    """

    def __init__(self, ids: Union[ShardManifest, str, Path, Sequence[str]], keep_ratio: Optional[float] = None, *,
                 pruner: Optional[AdaPruner] = None, id_scheme: Optional[str] = None, warn_repeats: bool = True,
                 **adapruner_kw):
        manifest: Optional[ShardManifest] = None
        if isinstance(ids, (ShardManifest, Path, str)):
            manifest = load_manifest(ids)
            id_list = manifest.ids()
            if id_scheme is not None and id_scheme != manifest.id_scheme:
                raise PruneDataError(f"id_scheme={id_scheme!r} but the manifest uses {manifest.id_scheme!r}")
            id_scheme = manifest.id_scheme
        else:
            id_list = [str(k) for k in ids]
            if len(set(id_list)) != len(id_list):
                dup = [k for k, c in Counter(id_list).items() if c > 1][:3]
                raise PruneDataError(f"sample ids must be unique; repeated: {dup}")
        self.manifest = manifest
        self.id_scheme = check_scheme(id_scheme or "key")
        keys = sorted(id_list)
        if not keys:
            raise PruneDataError("no sample ids: the shards are empty")
        if pruner is None:
            if keep_ratio is None:
                raise PruneDataError("pass keep_ratio (or a ready AdaPruner as pruner=)")
            super().__init__(len(keys), keep_ratio, **adapruner_kw)
        else:
            if adapruner_kw or keep_ratio is not None:
                raise PruneDataError("pass either pruner= or keep_ratio/AdaPruner parameters, not both")
            if not isinstance(pruner, AdaPruner):
                raise OptionError(f"pruner must be an AdaPruner, got {type(pruner).__name__}")
            if pruner.num_samples != len(keys):
                raise PruneDataError(
                    f"the AdaPruner has {pruner.num_samples} mask entries but there are {len(keys)} sample ids")
            # adopt the given pruner: its parameters, state, device and process group
            super().__init__(len(keys), device=pruner.mask.device, process_group=pruner.process_group,
                             sync_tolerance=pruner.sync_tolerance, **pruner.params())
            AdaPruner.load_state_dict(self, pruner.state_dict())
        self.use_keys(keys)
        self.fingerprint = keys_fingerprint(self.keys)
        self.warn_repeats = bool(warn_repeats)
        self._epoch_seen = torch.zeros(len(self.keys), dtype=torch.bool)
        self._warned_repeat = False

    @property
    def pruner(self) -> "KeyedAdaPruner":
        """The pruner itself (it used to wrap an AdaPruner under this name)."""
        return self

    @classmethod
    def from_manifest(cls, manifest: Union[ShardManifest, str, Path], keep_ratio: Optional[float] = None,
                      **kw) -> "KeyedAdaPruner":
        return cls(manifest, keep_ratio, **kw)

    @classmethod
    def from_shards(cls, urls: UrlsLike, keep_ratio: Optional[float] = None, *, id_scheme: str = "key",
                    handler: Handler = reraise_exception, **kw) -> "KeyedAdaPruner":
        """Scan the shards once (tar headers only) for the id set, then build the pruner."""
        return cls(scan_shards(urls, id_scheme=id_scheme, handler=handler), keep_ratio, **kw)

    # ids -> mask positions
    def positions(self, keys: Sequence[str], urls: Optional[Sequence[str]] = None) -> torch.Tensor:  # type: ignore[override]
        """Mask positions of the batch's samples (from its ``__key__`` list, plus ``__url__`` for
        ``id_scheme='shard/key'``)."""
        if isinstance(keys, torch.Tensor):
            raise PruneDataError("KeyedAdaPruner needs the batch's sample keys (strings from '__key__'), got a tensor; "
                                 "for map-style data with integer indices use prunedata.AdaPruner")
        ids = ids_of(keys, urls, self.id_scheme)
        try:
            return super().positions(ids)
        except PruneDataError as e:
            if self.id_scheme == "shard/key":
                raise PruneDataError(f"{e} (ids are 'shard/key'; pass the batch's '__url__' list)") from None
            raise

    # AdaPruner API
    def loss(self, keys: Sequence[str], losses: torch.Tensor, urls: Optional[Sequence[str]] = None) -> torch.Tensor:
        """Combined AdaPruner objective for a batch with ids ``keys`` (see :meth:`AdaPruner.loss`)."""
        pos = self.positions(keys, urls)
        if self.warn_repeats and not self._warned_repeat:
            self._check_repeats(pos)
        return super().loss(pos, losses)

    def _check_repeats(self, pos: torch.Tensor) -> None:
        again = self._epoch_seen[pos] | (torch.bincount(pos, minlength=len(self.keys))[pos] > 1)
        self._epoch_seen[pos] = True
        if bool(again.any()):
            self._warned_repeat = True
            k = self.keys[int(pos[again.nonzero()[0, 0]])]
            logger.warning("KeyedAdaPruner: sample %r came back within epoch %d -- the stream shows samples more than "
                           "once per epoch, so the mask learns from repeated samples. Split the shards over DataLoader "
                           "workers and ranks (wds.split_by_worker / wds.split_by_node, as pruned_webdataset does), or "
                           "pass warn_repeats=False if you sample with replacement (resampled=True)", k, self.epoch)

    def weights(self, keys: Sequence[str], urls: Optional[Sequence[str]] = None) -> torch.Tensor:
        """Detached soft weights of the batch's samples (see :meth:`AdaPruner.weights`)."""
        return super().weights(self.positions(keys, urls))

    def mask_loss(self, keys: Sequence[str], losses: torch.Tensor, urls: Optional[Sequence[str]] = None) -> torch.Tensor:
        """The mask's part of the objective (see :meth:`AdaPruner.mask_loss`)."""
        return super().mask_loss(self.positions(keys, urls), losses)

    def set_epoch(self, epoch: int) -> None:
        self._epoch_seen.zero_()
        super().set_epoch(epoch)

    def end_epoch(self) -> Dict[str, Any]:
        self._epoch_seen.zero_()
        return super().end_epoch()

    def logits(self) -> Dict[str, float]:
        """Current mask logit per sample id."""
        return dict(zip(self.keys, self.mask.detach().cpu().tolist()))

    def selection(self, dataset: Any = None, *, method: str = "adapruner",  # type: ignore[override]
                  extra_params: Optional[Dict[str, Any]] = None) -> Selection:
        """The binarised mask as a keyed :class:`Selection` (scores = mask logits in sorted-id order)."""
        base = super().selection(fingerprint=self.fingerprint, extra_params=extra_params, method=method)
        kept = [self.keys[i] for i in base.kept.tolist()]
        sel = Selection.from_keys(kept, self.keys, method=base.method, params=base.params,
                                  fingerprint=self.fingerprint, scores=base.scores, score_name=base.score_name,
                                  metrics=base.metrics, extra=dict(base.extra))
        if self.manifest is not None:
            annotate_selection(sel, self.manifest, set(kept))
        else:
            sel.extra["id_scheme"] = self.id_scheme
        return sel

    def state_dict(self) -> Dict[str, Any]:
        return {"keys_fingerprint": self.fingerprint, "id_scheme": self.id_scheme, "num_keys": len(self.keys),
                "pruner": super().state_dict()}

    def load_state_dict(self, state: Dict[str, Any], strict: bool = True) -> None:
        if state.get("keys_fingerprint") != self.fingerprint:
            raise SelectionMismatchError(
                f"checkpoint was made for another key set ({state.get('num_keys')} ids, fingerprint "
                f"{state.get('keys_fingerprint')}); this pruner has {len(self.keys)} ids ({self.fingerprint})")
        super().load_state_dict(state["pruner"], strict=strict)

    def __repr__(self) -> str:
        return (f"KeyedAdaPruner({len(self.keys)} ids, id_scheme={self.id_scheme!r}, keep_ratio="
                f"{self.keep_ratio}, epoch {self.epoch}/{self.epochs})")
