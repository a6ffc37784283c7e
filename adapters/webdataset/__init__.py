"""webdataset integration: keyed selections, pruning on read, pruned shards, AdaPruner on streams.

Tar shards read as streams have no index, only each sample's ``__key__``. A sample's id is its
``__key__`` (``id_scheme="key"``, keys unique across shards) or, where keys repeat across shards,
``"<shard file name>/<key>"`` (``id_scheme="shard/key"``, e.g. ``"train-000003.tar/img_0017"``).

* :class:`ShardManifest` (:func:`scan_shards`, :func:`load_manifest`): the shards and their keys in stream order.
* :func:`keyed_selection`, :func:`to_keyed`, :func:`to_index`: keyed selections, and index selections read
  in the manifest's stream order.
* :func:`select_keys` / :func:`pruned_webdataset`: pruning on read, before anything is decoded.
* :func:`write_pruned_shards`: the kept samples copied to new shards, with a manifest.
* :class:`KeyedAdaPruner`: AdaPruner over a stream, its mask addressed by sample id.

Corrupt or truncated shards follow webdataset's handler convention: ``handler=reraise_exception``
(default) raises; ``wds.warn_and_continue`` / ``wds.ignore_and_continue`` skip the rest of the broken
shard and go on with the next one.

>>> import webdataset as wds
>>> from prunedata.adapters.webdataset import pruned_webdataset, select_keys
>>> sel = Selection.load("selection.json")
>>> ds = pruned_webdataset("data/train-{000000..000099}.tar", sel).decode("pil").to_tuple("png", "cls")
>>> # or, in an explicit pipeline:
>>> ds = wds.DataPipeline(wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker,
...                       wds.tarfile_to_samples(), select_keys(sel), wds.decode("pil"),
...                       wds.to_tuple("png", "cls"))
"""
from __future__ import annotations

from prunedata._optional import require

require("webdataset", purpose="prunedata.adapters.webdataset")  # the package's one check of the dependency

from .ids import ID_SCHEMES, IncompleteShardError, ManifestError, sample_id, shard_name
from .manifest import ShardInfo, ShardManifest, expand_shards, load_manifest
from .reading import iter_raw_samples, scan_shards
from .selections import kept_per_shard, keyed_selection, to_index, to_keyed
from .stage import KeepFiles, SelectKeys, pruned_webdataset, select_keys
from .writer import write_pruned_shards
from .keyed import KeyedAdaPruner

__all__ = ['ID_SCHEMES', 'ManifestError', 'ShardInfo', 'ShardManifest', 'shard_name', 'sample_id', 'expand_shards', 'scan_shards', 'load_manifest', 'keyed_selection', 'to_keyed', 'to_index', 'kept_per_shard', 'SelectKeys', 'KeepFiles', 'select_keys', 'pruned_webdataset', 'iter_raw_samples', 'write_pruned_shards', 'KeyedAdaPruner', 'IncompleteShardError']

