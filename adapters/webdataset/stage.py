"""The pipeline stage: keep only the selected samples of a webdataset stream (``select_keys``, ``pruned_webdataset``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Union

import webdataset as wds
from webdataset.handlers import reraise_exception
from webdataset.tariterators import base_plus_ext

from prunedata.errors import PruneDataError, SelectionMismatchError
from prunedata.selection import Selection
from .ids import Handler, IncompleteShardError, check_scheme, sample_id, shard_name
from .manifest import ShardManifest, UrlsLike, expand_shards, load_manifest
from .selections import resolve_selection


class SelectKeys:
    """Pipeline stage dropping pruned samples by id; put it right after the tar samples are grouped.

    Works on any iterator of sample dicts carrying ``__key__`` (and ``__url__`` for
    ``id_scheme='shard/key'``): ``wds.DataPipeline(..., wds.tarfile_to_samples(), SelectKeys(sel),
    wds.decode(...))`` or ``wds.WebDataset(urls).compose(SelectKeys(sel)).decode(...)``. Samples are
    dropped before anything is decoded. The stage holds no per-epoch state, so each DataLoader
    worker and rank filters its own shards independently.

    Parameters
    ----------
    selection: a keyed :class:`Selection` or a path to one; an index selection needs ``manifest``.
    manifest: the shards' :class:`ShardManifest` (or path); also checks the selection belongs to it.
    invert: keep the *pruned* samples instead (e.g. to inspect what was dropped).
    check_shards: when the selection records its shards (``extra["shards"]``), raise
        :class:`SelectionMismatchError` on a sample from a shard it does not know.
    handler: webdataset exception handler for samples without ``__key__`` and for incomplete shards.
    check_counts: when the selection records how many samples it keeps of each shard
        (``extra["shards"]``, written by :func:`keyed_selection`), a shard that yields fewer of them
        (cut off, even exactly at a file boundary, where tar reading sees a clean end) raises
        :class:`IncompleteShardError` -- or, with a continuing handler such as
        ``wds.warn_and_continue``, is reported through it (a warning) and reading goes on. Each pass
        over a shard is counted while its samples arrive in shard order (the stage's place, right
        after ``tarfile_to_samples``); a shard cut before its first kept sample yields nothing and
        cannot be told from one this worker was not given.

    Attributes ``num_seen`` / ``num_kept`` count this process's samples (each DataLoader worker
    has its own copy).
    """

    def __init__(self, selection: Union[Selection, str, Path], *, manifest: Union[ShardManifest, str, Path, None] = None,
                 invert: bool = False, check_shards: bool = True, handler: Handler = reraise_exception,
                 check_counts: bool = True):
        manifest = load_manifest(manifest) if manifest is not None else None
        self.selection = resolve_selection(selection, manifest)
        self.id_scheme = check_scheme(self.selection.extra.get("id_scheme", "key"))
        self.keep = self.selection.key_set
        self.invert = bool(invert)
        self.handler = handler
        shards = self.selection.extra.get("shards") or []
        self.shard_names = frozenset(s["name"] for s in shards) if (check_shards and shards) else None
        self.expected: Optional[Dict[str, int]] = None
        if check_counts and shards:
            self.expected = {s["name"]: int(s["num_samples"]) - int(s["num_kept"]) if invert else int(s["num_kept"])
                             for s in shards}
        self.num_seen = self.num_kept = 0
        self.incomplete: List[Dict[str, Any]] = []

    def _short_shard(self, url: Optional[str], got: int) -> Optional[IncompleteShardError]:
        """The error for a pass over ``url`` that yielded ``got`` samples, if fewer than recorded."""
        if self.expected is None or url is None:
            return None
        want = self.expected.get(shard_name(url))
        if want is None or got >= want:
            return None
        self.incomplete.append({"url": url, "kept_read": got, "kept_recorded": want})
        return IncompleteShardError(
            f"shard {url} gave {got} of the {want} samples the selection keeps from it: the shard is truncated "
            "or corrupt (restore it, or pass handler=wds.warn_and_continue to go on without the missing samples)")

    def __call__(self, src: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        keep, invert, scheme = self.keep, self.invert, self.id_scheme
        names = self.shard_names
        pass_url, pass_kept = None, 0  # the shard being read and its kept samples so far
        for sample in src:
            try:
                key = sample["__key__"]
                url = sample.get("__url__")
                if names is not None and url is not None and url != pass_url and shard_name(url) not in names:
                    raise SelectionMismatchError(
                        f"sample {key!r} comes from shard {shard_name(url)!r}, which the selection (method "
                        f"{self.selection.method!r}, {len(names)} shards) was not made for. Use the "
                        "selection made for these shards, or pass check_shards=False if the shards were renamed.")
                sid = key if scheme == "key" else sample_id(key, url, scheme)
                if url != pass_url:
                    short = self._short_shard(pass_url, pass_kept)
                    pass_url, pass_kept = url, 0
                    if short is not None:
                        raise short
            except (SelectionMismatchError, IncompleteShardError) as exn:
                if isinstance(exn, SelectionMismatchError) or not self.handler(exn):
                    raise
            except Exception as exn:  # noqa: BLE001
                if not isinstance(exn, PruneDataError):
                    exn = PruneDataError(
                        f"sample without '__key__' (fields {sorted(sample) if isinstance(sample, dict) else type(sample).__name__}); "
                        "put the pruning stage before to_tuple/map steps that drop the key")
                if self.handler(exn):
                    continue
                break
            self.num_seen += 1
            if (sid in keep) != invert:
                self.num_kept += 1
                pass_kept += 1
                yield sample
        short = self._short_shard(pass_url, pass_kept)
        if short is not None and not self.handler(short):
            raise short

    def files(self) -> "KeepFiles":
        """A ``select_files`` predicate for ``wds.WebDataset``/``tarfile_to_samples``: skips reading
        the bytes of pruned samples (``id_scheme='key'`` only)."""
        if self.id_scheme != "key":
            raise PruneDataError("file-level skipping needs id_scheme='key' (file names carry no shard)")
        return KeepFiles(self.keep, invert=self.invert)

    def __repr__(self) -> str:
        return (f"SelectKeys({self.selection.num_kept} of {self.selection.dataset_size} kept, "
                f"id_scheme={self.id_scheme!r}{', inverted' if self.invert else ''})")


class KeepFiles:
    """``select_files`` predicate: True for tar members whose sample key is kept."""

    def __init__(self, keys: Iterable[str], invert: bool = False):
        self.keys = keys if isinstance(keys, frozenset) else frozenset(keys)
        self.invert = bool(invert)

    def __call__(self, fname: str) -> bool:
        prefix, _ = base_plus_ext(fname)
        if prefix is None:
            return True  # let webdataset decide what to do with it
        return (prefix in self.keys) != self.invert


def select_keys(selection: Union[Selection, str, Path], **kw) -> SelectKeys:
    """The pruning stage for a webdataset pipeline; see :class:`SelectKeys`."""
    return SelectKeys(selection, **kw)


def pruned_webdataset(urls: UrlsLike, selection: Union[Selection, str, Path], *,
                      manifest: Union[ShardManifest, str, Path, None] = None, skip_pruned_reads: bool = True,
                      invert: bool = False, check_shards: bool = True, handler: Handler = reraise_exception,
                      shardshuffle: Union[bool, int] = False, nodesplitter: Optional[Callable] = None,
                      workersplitter: Optional[Callable] = None, **kw) -> "wds.WebDataset":
    """``wds.WebDataset`` over ``urls`` that yields only the selection's kept samples, still raw.

    Chain ``.decode(...)``, ``.to_tuple(...)``, ``.batched(...)`` as usual. Shards are split by node
    (``wds.split_by_node``) and by DataLoader worker (``wds.split_by_worker``) unless other
    splitters are given. With ``id_scheme='key'`` and ``skip_pruned_reads`` the bytes of pruned
    files are not even copied out of the tar stream. ``urls`` may also be a manifest (or its path).
    Other keyword arguments go to ``wds.WebDataset``.
    """
    if manifest is None and (isinstance(urls, ShardManifest)
                             or (isinstance(urls, (str, Path)) and str(urls).endswith(".json"))):
        manifest = urls
    stage = SelectKeys(selection, manifest=manifest, invert=invert, check_shards=check_shards, handler=handler)
    url_list = expand_shards(urls)
    if skip_pruned_reads and stage.id_scheme == "key" and "select_files" not in kw:
        kw["select_files"] = stage.files()
    kw.setdefault("empty_check", False)  # a worker's shards may keep nothing
    ds = wds.WebDataset(url_list, handler=handler, shardshuffle=shardshuffle,
                        nodesplitter=nodesplitter or wds.split_by_node,
                        workersplitter=workersplitter or wds.split_by_worker, **kw)
    return ds.compose(stage)
