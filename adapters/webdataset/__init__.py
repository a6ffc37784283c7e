"""webdataset integration: keyed selections, pruning on read, pruned shards, AdaPruner on streams.

Tar shards read as streams have no index, only each sample's ``__key__``. This module makes a
:class:`~prunedata.selection.Selection` work on them:

* **Sample ids.** By default a sample's id is its ``__key__`` (``id_scheme="key"``; keys must then be
  unique across shards). Where keys repeat across shards use ``id_scheme="shard/key"``: the id is
  ``"<shard file name>/<key>"``, e.g. ``"train-000003.tar/img_0017"``.
* **Manifests.** :class:`ShardManifest` lists the shards and their keys in stream order. It comes
  from one pass over the shards (:func:`scan_shards`, tar headers only, no image data decoded) or
  from a file written by :meth:`ShardManifest.save` or :func:`write_pruned_shards`.
* **Selections.** :func:`keyed_selection` builds a keyed selection (``Selection.from_keys``) with the
  id scheme and per-shard kept counts in ``selection.extra``. Index selections address samples by
  their position in the manifest's stream order; :func:`to_keyed` / :func:`to_index` convert.
* **Pruning on read.** :func:`select_keys` returns a pipeline stage for ``wds.DataPipeline`` /
  ``WebDataset.compose``: it drops pruned samples right after the tar samples are grouped, before
  ``decode``. Every DataLoader worker and rank filters its own shards, so with ``split_by_node`` /
  ``split_by_worker`` each kept sample is seen exactly once per epoch. :func:`pruned_webdataset`
  builds the whole ``wds.WebDataset`` and, for key ids, also skips reading pruned files' bytes.
* **Pruned shards.** :func:`write_pruned_shards` writes the kept samples to new shards (keys, file
  contents and order preserved) plus a ``manifest.json``; every finished shard is renamed into place
  and recorded at once, so an error part-way loses nothing already written.
* **AdaPruner on streams.** :class:`KeyedAdaPruner` addresses the mask by sample id through a sorted
  key table and runs :class:`~prunedata.adapruner.AdaPruner` underneath (same losses and schedule);
  its :meth:`~KeyedAdaPruner.selection` is keyed.

Corrupt or truncated shards follow webdataset's handler convention: ``handler=reraise_exception``
(default) raises; ``wds.warn_and_continue`` / ``wds.ignore_and_continue`` skip the rest of the
broken shard and go on with the next one. A sample that was being read when a shard broke off is
dropped (it may lack files).

>>> import webdataset as wds
>>> from prunedata.adapters.webdataset import pruned_webdataset, select_keys
>>> sel = Selection.load("selection.json")
>>> ds = pruned_webdataset("data/train-{000000..000099}.tar", sel).decode("pil").to_tuple("png", "cls")
>>> # or, in an explicit pipeline:
>>> ds = wds.DataPipeline(wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker,
...                       wds.tarfile_to_samples(), select_keys(sel), wds.decode("pil"),
...                       wds.to_tuple("png", "cls"))

Modules: :mod:`.ids` (sample ids, shard names), :mod:`.reading` (strict tar reading),
:mod:`.manifest` (shard manifests), :mod:`.selections` (keyed selections), :mod:`.stage` (the
pipeline stage), :mod:`.writer` (pruned shards), :mod:`.keyed` (:class:`KeyedAdaPruner`).
"""
from __future__ import annotations

try:  # the package's one check of the optional dependency
    import webdataset  # noqa: F401
except ImportError as _e:  # pragma: no cover - depends on the install
    raise ImportError(
        "prunedata.adapters.webdataset needs the webdataset package: pip install 'prunedata[webdataset]'"
    ) from _e

from .ids import ID_SCHEMES, IncompleteShardError, ManifestError, expand_shards, sample_id, shard_name
from .reading import iter_raw_samples
from .manifest import ShardInfo, ShardManifest, load_manifest, scan_shards
from .selections import kept_per_shard, keyed_selection, to_index, to_keyed
from .stage import KeepFiles, SelectKeys, pruned_webdataset, select_keys
from .writer import write_pruned_shards
from .keyed import KeyedAdaPruner

__all__ = ['ID_SCHEMES', 'ManifestError', 'ShardInfo', 'ShardManifest', 'shard_name', 'sample_id', 'expand_shards', 'scan_shards', 'load_manifest', 'keyed_selection', 'to_keyed', 'to_index', 'kept_per_shard', 'SelectKeys', 'KeepFiles', 'select_keys', 'pruned_webdataset', 'iter_raw_samples', 'write_pruned_shards', 'KeyedAdaPruner', 'IncompleteShardError']

