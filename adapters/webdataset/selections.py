"""Selections of a stream: keyed by sample id, converted to and from index selections via a manifest."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Optional, Union

import numpy as np

from prunedata.errors import OptionError, SelectionFormatError, SelectionMismatchError
from prunedata.selection import Selection
from .ids import ids_of
from .manifest import ShardManifest, load_manifest


def kept_per_shard(selection: Selection) -> Dict[str, Dict[str, int]]:
    """``{shard name: {"num_samples": n, "num_kept": k}}`` recorded in a keyed selection (or {})."""
    return {s["name"]: {"num_samples": int(s["num_samples"]), "num_kept": int(s["num_kept"])}
            for s in (selection.extra.get("shards") or [])}


def keyed_selection(kept_ids: Iterable[str], manifest: Union[ShardManifest, str, Path], **kw) -> Selection:
    """A keyed selection (``Selection.from_keys``) of the manifest's samples.

    ``selection.extra`` gets ``id_scheme`` and per-shard ``{"name", "num_samples", "num_kept"}`` (in
    stream order), which lets readers check they read the right shards and size their epochs.
    """
    manifest = load_manifest(manifest)
    kept_set = set(str(k) for k in kept_ids)
    sel = Selection.from_keys(kept_set, manifest.ids(), **kw)
    annotate_selection(sel, manifest, kept_set)
    return sel


def annotate_selection(sel: Selection, manifest: ShardManifest, kept_set) -> None:
    sel.extra["id_scheme"] = manifest.id_scheme
    sel.extra["shards"] = [{"name": s.name, "num_samples": s.num_samples,
                            "num_kept": sum(i in kept_set for i in ids_of(s.keys, s.url, manifest.id_scheme))}
                           for s in manifest.shards]


def to_keyed(selection: Selection, manifest: Union[ShardManifest, str, Path]) -> Selection:
    """Keyed copy of an index selection; index ``i`` is the ``i``-th sample in manifest (stream) order."""
    manifest = load_manifest(manifest)
    if selection.id_kind == "key":
        return selection
    if selection.dataset_size != manifest.num_samples:
        raise SelectionMismatchError(f"index selection is for {selection.dataset_size} samples but the shards hold "
                                     f"{manifest.num_samples}; use the selection made for these shards")
    ids = manifest.ids()
    kept = [ids[i] for i in selection.kept.tolist()]
    scores = None
    if selection.scores is not None:  # re-order to the sorted-key order keyed selections use
        order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
        scores = selection.scores[order]
    extra = {k: v for k, v in selection.extra.items() if k not in ("id_scheme", "shards")}
    extra["converted_from"] = {"id_kind": "index", "fingerprint": selection.fingerprint, "order": "manifest"}
    sel = Selection.from_keys(kept, ids, method=selection.method, params=dict(selection.params),
                              scores=scores, score_name=selection.score_name, metrics=dict(selection.metrics),
                              extra=extra)
    annotate_selection(sel, manifest, set(kept))
    return sel


def to_index(selection: Selection, manifest: Union[ShardManifest, str, Path]) -> Selection:
    """Index copy of a keyed selection (positions in manifest stream order)."""
    manifest = load_manifest(manifest)
    if selection.id_kind == "index":
        return selection
    _check_against_manifest(selection, manifest)
    ids = manifest.ids()
    keep = selection.key_set
    mask = np.fromiter((i in keep for i in ids), dtype=bool, count=len(ids))
    scores = None
    if selection.scores is not None:
        order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
        scores = np.empty_like(selection.scores)
        scores[order] = selection.scores
    extra = {k: v for k, v in selection.extra.items() if k not in ("id_scheme", "shards")}
    return Selection.from_mask(mask, method=selection.method, params=dict(selection.params),
                               fingerprint=selection.fingerprint, scores=scores, score_name=selection.score_name,
                               metrics=dict(selection.metrics), extra=extra)


def _check_against_manifest(selection: Selection, manifest: ShardManifest) -> None:
    scheme = selection.extra.get("id_scheme", "key")
    if scheme != manifest.id_scheme:
        raise SelectionMismatchError(f"the selection addresses samples by {scheme!r} but the manifest by "
                                     f"{manifest.id_scheme!r}; scan the shards again with the selection's id_scheme")
    selection.check(size=manifest.num_samples, fingerprint=manifest.fingerprint)


def resolve_selection(selection: Union[Selection, str, Path], manifest: Optional[ShardManifest]) -> Selection:
    if isinstance(selection, (str, Path)):
        selection = Selection.load(selection)
    if not isinstance(selection, Selection):
        raise OptionError(f"expected a prunedata Selection (or a path to one), got {type(selection).__name__}")
    if selection.id_kind == "index":
        if manifest is None:
            raise SelectionFormatError(
                "this selection addresses samples by index, but a stream only has keys. Pass the shards' "
                "manifest (manifest=scan_shards(urls) or a manifest.json) so index i can be read as the i-th "
                "sample in stream order, or convert once with to_keyed(selection, manifest).")
        return to_keyed(selection, manifest)
    if manifest is not None:
        _check_against_manifest(selection, manifest)
    return selection
