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
"""
from __future__ import annotations

import json
import logging
import os
import re
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from prunedata._io import atomic_write_text
from prunedata.adapruner import AdaPruner
from prunedata.errors import OptionError, PruneDataError, SelectionFormatError, SelectionMismatchError
from prunedata.identity import keys_fingerprint
from prunedata.progress import progress
from prunedata.selection import Selection

try:
    import webdataset as wds
    from webdataset.gopen import gopen
    from webdataset.handlers import reraise_exception
    from webdataset.shardlists import expand_urls
    from webdataset.tariterators import base_plus_ext
except ImportError as _e:  # pragma: no cover - depends on the install
    raise ImportError(
        "prunedata.adapters.webdataset needs the webdataset package: pip install 'prunedata[webdataset]'"
    ) from _e

logger = logging.getLogger(__name__)

__all__ = [
    "ID_SCHEMES", "ManifestError", "ShardInfo", "ShardManifest", "shard_name", "sample_id", "expand_shards",
    "scan_shards", "load_manifest", "keyed_selection", "to_keyed", "to_index", "kept_per_shard",
    "SelectKeys", "KeepFiles", "select_keys", "pruned_webdataset", "iter_raw_samples",
    "write_pruned_shards", "KeyedAdaPruner", "IncompleteShardError",
]

ID_SCHEMES = ("key", "shard/key")
MANIFEST_FORMAT = "prunedata.shards"
MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"

Handler = Callable[[BaseException], bool]
UrlsLike = Union[str, Sequence[str], "ShardManifest", Path]


class ManifestError(PruneDataError):
    """A shard manifest is unreadable or inconsistent (duplicate ids, unknown format, ...)."""


class IncompleteShardError(PruneDataError):
    """A shard yielded fewer kept samples than the selection recorded for it (truncated or corrupt)."""


# --------------------------------------------------------------------------- ids
def shard_name(url: str) -> str:
    """The shard's file name (last path component of the URL, query string removed)."""
    u = str(url)
    if u.startswith("pipe:"):
        # e.g. "pipe:curl -s http://host/a/train-0001.tar" -> the last word that looks like a file
        words = [w for w in re.split(r"\s+", u[5:]) if w and not w.startswith("-")]
        u = words[-1] if words else u
    u = u.split("?", 1)[0].rstrip("/")
    return u.rsplit("/", 1)[-1]


def _check_scheme(id_scheme: str) -> str:
    if id_scheme not in ID_SCHEMES:
        raise PruneDataError(f"id_scheme must be one of {ID_SCHEMES}, got {id_scheme!r}")
    return id_scheme


def sample_id(key: str, url: Optional[str] = None, id_scheme: str = "key") -> str:
    """The id of a sample: its ``__key__``, or ``"<shard name>/<key>"`` for ``id_scheme='shard/key'``."""
    if id_scheme == "key":
        return str(key)
    if id_scheme == "shard/key":
        if url is None:
            raise PruneDataError(
                "id_scheme='shard/key' needs the shard of every sample; keep '__url__' in the samples "
                "(and pass the batch's '__url__' list next to its '__key__' list)"
            )
        return f"{shard_name(url)}/{key}"
    _check_scheme(id_scheme)
    raise AssertionError  # pragma: no cover


def _ids_of(keys: Sequence[str], urls: Optional[Sequence[str]], id_scheme: str) -> List[str]:
    if isinstance(keys, str):
        keys = [keys]
    if id_scheme == "key":
        return [str(k) for k in keys]
    if urls is None:
        sample_id("", None, id_scheme)  # raises the explanatory error
    if isinstance(urls, str):
        urls = [urls] * len(keys)
    if len(urls) != len(keys):
        raise PruneDataError(f"got {len(keys)} keys but {len(urls)} urls; they must match one to one")
    return [sample_id(k, u, id_scheme) for k, u in zip(keys, urls)]


def expand_shards(urls: UrlsLike) -> List[str]:
    """Shard URLs from a brace pattern (``"d/train-{000..009}.tar"``), a list, a manifest (object or
    ``.json`` path) or a folder holding a ``manifest.json`` (e.g. the output of :func:`write_pruned_shards`)."""
    if isinstance(urls, ShardManifest):
        return urls.urls
    if isinstance(urls, Path):
        urls = str(urls)
    if isinstance(urls, str):
        if urls.endswith(".json") and os.path.isfile(urls):
            return ShardManifest.load(urls).urls
        if os.path.isdir(urls):
            if not os.path.isfile(os.path.join(urls, MANIFEST_NAME)):
                raise PruneDataError(
                    f"{urls} is a folder without a {MANIFEST_NAME}; pass the shard URLs (e.g. "
                    f"'{urls}/train-{{000000..000099}}.tar') or write a manifest with scan_shards(urls).save(...)"
                )
            return ShardManifest.load(os.path.join(urls, MANIFEST_NAME)).urls
        out = expand_urls(urls)
    else:
        out = [str(u) for u in urls]
    if not out:
        raise PruneDataError("no shard URLs given")
    return out


# --------------------------------------------------------------------------- raw reading
def _meta(fname: str) -> bool:
    return "/" not in fname and fname.startswith("__") and fname.endswith("__")


def _annotate(exn: BaseException, url: str) -> BaseException:
    """Add the shard URL to an exception's message, as webdataset does."""
    if getattr(exn, "args", None):
        exn.args = (f"{exn.args[0]} @ {url}",) + tuple(exn.args[1:])
    else:
        exn.args = (f"@ {url}",)
    return exn


class _StrictTarInfo(tarfile.TarInfo):
    """TarInfo that treats a shard ending without its end-of-archive blocks as broken.

    ``tarfile`` in stream mode takes a missing, cut or garbled header after the first member for
    the end of the archive, so a shard truncated at a file boundary would look whole (webdataset
    inherits this). Here it raises ``tarfile.ReadError`` instead.
    """

    @classmethod
    def fromtarfile(cls, tf):  # noqa: D102 - see class docstring
        try:
            return super().fromtarfile(tf)
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as e:
            if tf.offset == 0:
                raise
            raise tarfile.ReadError(
                f"tar data ends or breaks at byte {tf.offset} without the end-of-archive marker ({e}): "
                "the shard is truncated or corrupt"
            ) from None


def iter_raw_samples(urls: UrlsLike, *, keep: Optional[Callable[[str, str], bool]] = None,
                     read_data: bool = True, handler: Handler = reraise_exception,
                     errors: Optional[List[Dict[str, str]]] = None,
                     done: Optional[List[str]] = None, strict: bool = True) -> Iterator[Dict[str, Any]]:
    """Yield complete raw samples ``{"__key__", "__url__", ext: bytes, ...}`` in stream order.

    File names and contents are kept exactly as stored (no lower-casing, no decoding). ``keep(key,
    url)`` returning False skips reading that sample's bytes (the sample is not yielded). With
    ``read_data=False`` only keys are read (values are None). A sample is yielded once the next one
    starts or its shard ends cleanly, so a sample cut off by a broken shard is never yielded.
    Errors go to ``handler`` (webdataset convention); ``errors`` collects ``{"url", "error"}`` and
    ``done`` the URLs read to their end. With ``strict`` (default) a shard that ends without the
    tar end-of-archive marker counts as broken (plain ``tarfile``/webdataset reading takes a shard
    cut at a file boundary for a whole one).
    """
    for url in expand_shards(urls):
        pending: Optional[Dict[str, Any]] = None
        want = True
        try:
            stream = gopen(url, "rb")
            try:
                tf = tarfile.open(fileobj=stream, mode="r|*", tarinfo=_StrictTarInfo if strict else None)
                for ti in tf:
                    fname = ti.name
                    if not ti.isreg() or fname is None or _meta(fname):
                        continue
                    prefix, suffix = base_plus_ext(fname)
                    if prefix is None:
                        continue
                    if pending is None or prefix != pending["__key__"]:
                        if pending is not None and want:
                            yield pending
                        pending = {"__key__": prefix, "__url__": url}
                        want = keep is None or keep(prefix, url)
                    if suffix in pending:
                        raise PruneDataError(f"{fname}: duplicate file name in tar file (sample {prefix!r}); the shard "
                                             "is corrupt or was written twice into one tar")
                    if want and read_data:
                        fh = tf.extractfile(ti)
                        pending[suffix] = fh.read() if fh is not None else b""
                    else:
                        pending[suffix] = None
                    tf.members = []
                if pending is not None and want:
                    yield pending
                pending = None
            finally:
                stream.close()
            if done is not None:
                done.append(url)
        except Exception as exn:  # noqa: BLE001 - routed to the handler, webdataset-style
            if pending is not None:
                logger.debug("dropping sample %r cut off by an error in %s", pending["__key__"], url)
            _annotate(exn, url)
            if errors is not None:
                errors.append({"url": url, "error": f"{type(exn).__name__}: {exn}"})
            if handler(exn):
                continue
            break


# --------------------------------------------------------------------------- manifests
@dataclass
class ShardInfo:
    """One shard: its URL and its sample keys in stream order."""

    url: str
    keys: List[str]
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return shard_name(self.url)

    @property
    def num_samples(self) -> int:
        return len(self.keys)


class ShardManifest:
    """Shards and their keys in stream order; the stream's stand-in for a dataset index.

    Attributes: ``shards`` (list of :class:`ShardInfo`), ``id_scheme``, ``complete`` (False when it
    was written part-way), ``extra`` (free-form: source, selection, errors, ...).
    """

    def __init__(self, shards: Sequence[ShardInfo], *, id_scheme: str = "key", complete: bool = True,
                 extra: Optional[Dict[str, Any]] = None):
        self.shards = list(shards)
        self.id_scheme = _check_scheme(id_scheme)
        self.complete = bool(complete)
        self.extra = dict(extra or {})
        self._ids: Optional[List[str]] = None
        self._check_unique()

    # ids
    def ids(self) -> List[str]:
        """Sample ids in stream order (shards in order, samples in shard order)."""
        if self._ids is None:
            out: List[str] = []
            for s in self.shards:
                out.extend(_ids_of(s.keys, [s.url] * len(s.keys), self.id_scheme))
            self._ids = out
        return self._ids

    def _check_unique(self) -> None:
        if self.id_scheme == "shard/key":
            names = Counter(s.name for s in self.shards)
            dup = [n for n, c in names.items() if c > 1]
            if dup:
                raise ManifestError(
                    f"shard file name {dup[0]!r} appears {names[dup[0]]} times; with id_scheme='shard/key' "
                    "shard names must be unique. Rename the shards."
                )
        ids = self.ids()
        if len(set(ids)) != len(ids):
            seen: Dict[str, str] = {}
            for s in self.shards:
                for k in _ids_of(s.keys, [s.url] * len(s.keys), self.id_scheme):
                    if k in seen:
                        where = f"shards {seen[k]} and {s.name}" if seen[k] != s.name else f"shard {s.name} (twice)"
                        hint = (" Sample keys must be unique across shards to address samples by key; pass "
                                "id_scheme='shard/key' to address them by shard and key."
                                if self.id_scheme == "key" and seen[k] != s.name else
                                " Keys must be unique within a shard.")
                        raise ManifestError(f"sample id {k!r} appears in {where}.{hint}")
                    seen[k] = s.name

    @property
    def urls(self) -> List[str]:
        return [s.url for s in self.shards]

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    def __len__(self) -> int:
        return self.num_samples

    @property
    def fingerprint(self) -> str:
        """:func:`~prunedata.identity.keys_fingerprint` of the id set (what keyed selections store)."""
        return keys_fingerprint(self.ids())

    def counts(self) -> Dict[str, int]:
        return {s.name: s.num_samples for s in self.shards}

    def __repr__(self) -> str:
        return (f"ShardManifest({len(self.shards)} shards, {self.num_samples} samples, "
                f"id_scheme={self.id_scheme!r}{'' if self.complete else ', incomplete'})")

    # I/O
    def to_json(self, root: Optional[Path] = None) -> str:
        head = {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "id_scheme": self.id_scheme,
                "complete": self.complete, "num_shards": len(self.shards), "num_samples": self.num_samples,
                "fingerprint": self.fingerprint}
        lines = []
        for s in self.shards:
            d: Dict[str, Any] = {"url": _relative(s.url, root), "num_samples": s.num_samples}
            if s.extra:
                d["extra"] = s.extra
            d["keys"] = s.keys
            lines.append("    " + json.dumps(d, separators=(",", ":"), default=str))
        text = json.dumps(head, indent=2)[:-2] + ",\n"
        text += '  "extra": ' + json.dumps(self.extra, separators=(",", ":"), default=str) + ",\n"
        text += '  "shards": [\n' + ",\n".join(lines) + "\n  ]\n}\n"
        return text

    def save(self, path: Union[str, Path]) -> Path:
        """Write atomically; local shard paths inside the manifest's folder are stored relative to it."""
        path = Path(path)
        atomic_write_text(path, self.to_json(path.parent.resolve()))
        logger.debug("wrote manifest %s (%d shards, %d samples)", path, len(self.shards), self.num_samples)
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "ShardManifest":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"manifest {path} does not exist")
        try:
            d = json.loads(path.read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ManifestError(f"{path} is not a readable shard manifest: {e}") from None
        if not isinstance(d, dict) or d.get("format") != MANIFEST_FORMAT:
            raise ManifestError(
                f"{path} is not a prunedata shard manifest (format={d.get('format') if isinstance(d, dict) else None!r}); "
                "make one with prunedata.adapters.webdataset.scan_shards(urls).save(path)"
            )
        if d.get("format_version") != MANIFEST_VERSION:
            raise ManifestError(f"{path}: manifest format version {d.get('format_version')} is not supported")
        root = path.parent.resolve()
        try:
            shards = [ShardInfo(url=_absolute(s["url"], root), keys=[str(k) for k in s["keys"]],
                                extra=s.get("extra") or {}) for s in d["shards"]]
        except (KeyError, TypeError) as e:
            raise ManifestError(f"{path}: damaged shard entry ({e!r})") from None
        for s, raw in zip(shards, d["shards"]):
            if "num_samples" in raw and int(raw["num_samples"]) != s.num_samples:
                raise ManifestError(f"{path}: shard {s.name} says {raw['num_samples']} samples but lists "
                                    f"{s.num_samples} keys; the file was edited or damaged")
        return cls(shards, id_scheme=d.get("id_scheme", "key"), complete=d.get("complete", True),
                   extra=d.get("extra") or {})


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _relative(url: str, root: Optional[Path]) -> str:
    if root is None or not _is_local(url):
        return url
    p = Path(url.replace("file:", "", 1) if url.startswith("file:") else url).resolve()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _absolute(url: str, root: Path) -> str:
    if not _is_local(url) or os.path.isabs(url):
        return url
    return str(root / url)


def load_manifest(source: Union[str, Path, "ShardManifest"]) -> ShardManifest:
    """A manifest object from a path (``manifest.json`` or a folder holding one) or as is."""
    if isinstance(source, ShardManifest):
        return source
    p = Path(source)
    if p.is_dir():
        p = p / MANIFEST_NAME
    return ShardManifest.load(p)


def scan_shards(urls: UrlsLike, *, id_scheme: str = "key", handler: Handler = reraise_exception,
                show_progress: bool = True) -> ShardManifest:
    """One pass over the shards reading tar headers only: the key set and stream order.

    Broken shards raise by default; with a continuing handler the keys read before the break are
    kept and the error is listed in ``manifest.extra["errors"]`` (and ``complete`` is False).
    """
    _check_scheme(id_scheme)
    url_list = expand_shards(urls)
    errors: List[Dict[str, str]] = []
    done: List[str] = []
    keys: Dict[str, List[str]] = {u: [] for u in url_list}
    it = iter_raw_samples(url_list, read_data=False, handler=handler, errors=errors, done=done)
    for s in progress(it, desc="scanning shards", disable=not show_progress):
        keys[s["__url__"]].append(s["__key__"])
    reached = set(done) | {e["url"] for e in errors}
    shards = [ShardInfo(url=u, keys=keys[u]) for u in url_list if u in reached]
    extra: Dict[str, Any] = {}
    if errors:
        extra["errors"] = errors
    return ShardManifest(shards, id_scheme=id_scheme, complete=len(done) == len(url_list), extra=extra)


# --------------------------------------------------------------------------- selections
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
    _annotate_selection(sel, manifest, kept_set)
    return sel


def _annotate_selection(sel: Selection, manifest: ShardManifest, kept_set) -> None:
    sel.extra["id_scheme"] = manifest.id_scheme
    rows = []
    for s in manifest.shards:
        ids = _ids_of(s.keys, [s.url] * len(s.keys), manifest.id_scheme)
        rows.append({"name": s.name, "num_samples": s.num_samples, "num_kept": sum(i in kept_set for i in ids)})
    sel.extra["shards"] = rows


def to_keyed(selection: Selection, manifest: Union[ShardManifest, str, Path]) -> Selection:
    """Keyed copy of an index selection; index ``i`` is the ``i``-th sample in manifest (stream) order."""
    manifest = load_manifest(manifest)
    if selection.id_kind == "key":
        return selection
    if selection.dataset_size != manifest.num_samples:
        raise SelectionMismatchError(
            f"index selection is for {selection.dataset_size} samples but the shards hold "
            f"{manifest.num_samples}; use the selection made for these shards"
        )
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
    _annotate_selection(sel, manifest, set(kept))
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
        raise SelectionMismatchError(
            f"the selection addresses samples by {scheme!r} but the manifest by {manifest.id_scheme!r}; "
            "scan the shards again with the selection's id_scheme"
        )
    selection.check(size=manifest.num_samples, fingerprint=manifest.fingerprint)


def _resolve_selection(selection: Union[Selection, str, Path], manifest: Optional[ShardManifest]) -> Selection:
    if isinstance(selection, (str, Path)):
        selection = Selection.load(selection)
    if not isinstance(selection, Selection):
        raise OptionError(f"expected a prunedata Selection (or a path to one), got {type(selection).__name__}")
    if selection.id_kind == "index":
        if manifest is None:
            raise SelectionFormatError(
                "this selection addresses samples by index, but a stream only has keys. Pass the shards' "
                "manifest (manifest=scan_shards(urls) or a manifest.json) so index i can be read as the i-th "
                "sample in stream order, or convert once with to_keyed(selection, manifest)."
            )
        return to_keyed(selection, manifest)
    if manifest is not None:
        _check_against_manifest(selection, manifest)
    return selection


# --------------------------------------------------------------------------- the pipeline stage
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
        self.selection = _resolve_selection(selection, manifest)
        self.id_scheme = _check_scheme(self.selection.extra.get("id_scheme", "key"))
        self.keep = self.selection.key_set
        self.invert = bool(invert)
        self.handler = handler
        shards = self.selection.extra.get("shards") or []
        self.shard_names = frozenset(s["name"] for s in shards) if (check_shards and shards) else None
        self.expected: Optional[Dict[str, int]] = None
        if check_counts and shards:
            self.expected = {s["name"]: int(s["num_samples"]) - int(s["num_kept"]) if invert else int(s["num_kept"])
                             for s in shards}
        self.num_seen = 0
        self.num_kept = 0
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
        last_url = None
        pass_url, pass_kept = None, 0  # the shard being read and its kept samples so far
        for sample in src:
            try:
                key = sample["__key__"]
                url = sample.get("__url__")
                if names is not None and url is not None and url != last_url:
                    name = shard_name(url)
                    if name not in names:
                        raise SelectionMismatchError(
                            f"sample {key!r} comes from shard {name!r}, which the selection (method "
                            f"{self.selection.method!r}, {len(names)} shards) was not made for. Use the "
                            "selection made for these shards, or pass check_shards=False if the shards "
                            "were renamed."
                        )
                    last_url = url
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
                        "put the pruning stage before to_tuple/map steps that drop the key"
                    )
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
    if isinstance(urls, (ShardManifest,)) or (isinstance(urls, (str, Path)) and str(urls).endswith(".json")):
        manifest = manifest if manifest is not None else load_manifest(urls)
    man = load_manifest(manifest) if manifest is not None else None
    stage = SelectKeys(selection, manifest=man, invert=invert, check_shards=check_shards, handler=handler)
    url_list = expand_shards(urls)
    if skip_pruned_reads and stage.id_scheme == "key" and "select_files" not in kw:
        kw["select_files"] = stage.files()
    kw.setdefault("empty_check", False)  # a worker's shards may keep nothing
    ds = wds.WebDataset(url_list, handler=handler, shardshuffle=shardshuffle,
                        nodesplitter=nodesplitter or wds.split_by_node,
                        workersplitter=workersplitter or wds.split_by_worker, **kw)
    return ds.compose(stage)


# --------------------------------------------------------------------------- pruned shards
def write_pruned_shards(source: UrlsLike, selection: Union[Selection, str, Path], out_dir: Union[str, Path], *,
                        manifest: Union[ShardManifest, str, Path, None] = None, maxcount: Optional[int] = None,
                        maxsize: Optional[float] = None, pattern: str = "pruned-%06d.tar",
                        handler: Handler = reraise_exception, overwrite: bool = False,
                        manifest_every: float = 10.0, show_progress: bool = True) -> ShardManifest:
    """Write the kept samples of ``source`` to new shards in ``out_dir`` plus ``manifest.json``.

    Samples keep their keys, file names, bytes and stream order. Without ``maxcount``/``maxsize``
    each source shard gives one pruned shard of the same file name (shards left empty are not
    written), so ``shard/key`` ids stay valid; with them, samples are repacked into ``pattern``
    shards of at most ``maxcount`` samples / ``maxsize`` bytes. Each shard is written to a temporary
    name and renamed when complete; the manifest is rewritten (atomically) with ``complete: false``
    after a finished shard at most every ``manifest_every`` seconds (0: after every shard), and always
    on an error and at the end. On an error the shard in progress is closed with the whole
    samples written so far, recorded, and the error re-raised (default handler) -- or, with a
    continuing handler, the rest of the broken source shard is skipped and listed under
    ``extra["errors"]``, the shard written from it is marked ``"partial": true`` and the manifest
    stays ``complete: false``. Returns the manifest of the written shards.
    """
    out_dir = Path(out_dir)
    man = load_manifest(manifest) if manifest is not None else None
    if man is None and (isinstance(source, (ShardManifest, Path)) or (isinstance(source, str) and source.endswith(".json"))):
        man = load_manifest(source)
    sel = _resolve_selection(selection, man)
    stage = SelectKeys(sel, check_shards=True)
    scheme = stage.id_scheme
    urls = expand_shards(source)
    if maxcount is not None and int(maxcount) < 1:
        raise PruneDataError(f"maxcount must be >= 1, got {maxcount}")
    if maxsize is not None and float(maxsize) <= 0:
        raise PruneDataError(f"maxsize must be > 0, got {maxsize}")
    repack = maxcount is not None or maxsize is not None
    known = stage.shard_names
    if known is not None:
        unknown = [shard_name(u) for u in urls if shard_name(u) not in known]
        if unknown:
            raise SelectionMismatchError(
                f"the selection was made for other shards: it does not know {unknown[:3]} "
                f"({len(unknown)} of {len(urls)} shards). Use the selection made for these shards."
            )
    if repack and "%" not in pattern:
        raise PruneDataError(f"pattern must contain a %-format for the shard number (e.g. 'pruned-%06d.tar'), got {pattern!r}")
    # refuse to overwrite the shards being read, or an earlier output
    out_dir.mkdir(parents=True, exist_ok=True)
    out_resolved = out_dir.resolve()
    local_inputs = {Path(u).resolve() for u in urls if _is_local(u)}
    if not repack:
        names = [shard_name(u) for u in urls]
        dup = [n for n, c in Counter(names).items() if c > 1]
        if dup:
            raise PruneDataError(f"two source shards are called {dup[0]!r}; pass maxcount=... to repack into new names")
        clash = [n for n in names if (out_resolved / n) in local_inputs]
        if clash:
            raise PruneDataError(
                f"out_dir {out_dir} holds the source shard {clash[0]!r}; writing there would overwrite the "
                "data being read. Choose another out_dir."
            )
    if (out_dir / MANIFEST_NAME).exists() and not overwrite:
        raise PruneDataError(f"{out_dir / MANIFEST_NAME} already exists; pass overwrite=True or choose another out_dir")
    stale = [p for p in out_dir.iterdir() if p.name.startswith(".") and p.name.endswith(".partial") and p.is_file()]
    for p in stale:  # shards a killed writer left half-written: never part of a manifest
        p.unlink()
    if stale:
        logger.info("removed %d half-written shard(s) left by an interrupted run in %s", len(stale), out_dir)
    sel_info = {"method": sel.method, "fingerprint": sel.fingerprint, "dataset_size": sel.dataset_size,
                "num_kept": sel.num_kept, "id_scheme": scheme}
    written: List[ShardInfo] = []
    errors: List[Dict[str, str]] = []
    done: List[str] = []
    state = {"fh": None, "tw": None, "tmp": None, "final": None, "keys": [], "size": 0, "src": None, "n": 0,
             "saved": time.monotonic()}

    def save_manifest(complete: bool, error: Optional[str] = None) -> ShardManifest:
        extra: Dict[str, Any] = {"selection": sel_info, "source": {"urls": urls, "read_to_end": list(done)}}
        if errors:
            extra["errors"] = list(errors)
        if error:
            extra["stopped_by"] = error
        m = ShardManifest(written, id_scheme=scheme, complete=complete, extra=extra)
        m.save(out_dir / MANIFEST_NAME)
        return m

    def open_shard(name: str) -> None:
        final = out_dir / name
        tmp = out_dir / f".{name}.partial"
        fh = open(tmp, "wb")
        compress = name.endswith((".gz", ".tgz"))
        state.update(fh=fh, tw=wds.TarWriter(fh, encoder=False, mtime=0, compress=compress or False),
                     tmp=tmp, final=final, keys=[], size=0)

    def close_shard() -> None:
        tw = state["tw"]
        if tw is None:
            return
        tw.close()
        state["fh"].flush()
        os.fsync(state["fh"].fileno())
        state["fh"].close()
        if state["keys"]:
            os.replace(state["tmp"], state["final"])
            info_extra: Dict[str, Any] = {"source": state["src"]} if not repack else {}
            if not repack and any(e["url"] == state["src"] for e in errors):
                info_extra["partial"] = True  # its source broke off: the samples after the break are missing
            written.append(ShardInfo(url=str(state["final"]), keys=list(state["keys"]), extra=info_extra))
            if time.monotonic() - state["saved"] >= float(manifest_every):
                save_manifest(False)
                state["saved"] = time.monotonic()
        else:
            os.unlink(state["tmp"])
        state.update(fh=None, tw=None, tmp=None, final=None, keys=[], size=0)

    keep_set = stage.keep

    def keep(key: str, url: str) -> bool:
        return (key if scheme == "key" else sample_id(key, url, scheme)) in keep_set

    save_manifest(False)
    it = iter_raw_samples(urls, keep=keep, handler=handler, errors=errors, done=done)
    try:
        for sample in progress(it, desc="writing pruned shards", disable=not show_progress):
            url = sample["__url__"]
            if repack:
                full = state["tw"] is not None and (
                    (maxcount is not None and len(state["keys"]) >= int(maxcount))
                    or (maxsize is not None and state["size"] >= float(maxsize)))
                if state["tw"] is None or full:
                    close_shard()
                    open_shard(pattern % state["n"])
                    state["n"] += 1
            elif state["src"] != url or state["tw"] is None:
                close_shard()
                open_shard(shard_name(url))
            state["src"] = url
            rec = {k: v for k, v in sample.items() if not k.startswith("__")}
            rec["__key__"] = sample["__key__"]
            state["size"] += state["tw"].write(rec)
            state["keys"].append(sample["__key__"])
        close_shard()
    except BaseException as exn:
        try:
            close_shard()
        finally:
            save_manifest(False, error=f"{type(exn).__name__}: {exn}")
        raise
    out = save_manifest(not errors)  # skipped samples (continuing handler): not complete
    if errors:
        logger.warning("pruned shards in %s lack the samples after the break in %d source shard(s) (%s); the "
                       "manifest says complete: false", out_dir, len(errors), ", ".join(e["url"] for e in errors))
    logger.info("wrote %d pruned shards with %d samples to %s", len(written), out.num_samples, out_dir)
    return out


# --------------------------------------------------------------------------- AdaPruner on streams
class KeyedAdaPruner(AdaPruner):
    """The AdaPruner of a stream: mask entries addressed by sample id (``__key__`` or ``shard/key``).

    It is an :class:`~prunedata.adapruner.AdaPruner` whose key table (:meth:`AdaPruner.use_keys`)
    holds the sorted ids (entry ``i`` of the mask is the ``i``-th id in sorted order, as in keyed
    selections); each batch's ids, which travel with the batch, are looked up there, so losses,
    schedule, binarisation and checkpoints are those of the map-style pruner. This class adds what
    streams need: ids from a manifest or the shards, ``shard/key`` ids from the batch's ``__url__``,
    a warning for a stream that repeats samples within an epoch, and keyed selections. Stream every sample each epoch (do not prune
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
    ``AdaPruner`` or subclass with one entry per id) to use your own. ``warn_repeats`` (default
    True): warn once when an id comes back within one epoch -- the sign of a stream whose shards are
    not split over DataLoader workers (``wds.split_by_worker``) or ranks, where every worker streams
    every shard and the mask sees each sample several times per epoch. Set it to False for streams
    that sample with replacement (``resampled=True``).

    Resume: ``state_dict()`` / ``load_state_dict()`` hold the mask, its optimiser and schedule position
    (``prunedata.checkpoint.save_checkpoint(path, pruner=keyed, model=..., optimizer=..., epoch=...)``
    writes it with the model); restored, the run continues to the selection of an uninterrupted one.
    """

    def __init__(self, ids: Union[ShardManifest, str, Path, Sequence[str]], keep_ratio: Optional[float] = None, *,
                 pruner: Optional[AdaPruner] = None, id_scheme: Optional[str] = None, warn_repeats: bool = True,
                 **adapruner_kw):
        manifest: Optional[ShardManifest] = None
        if isinstance(ids, (ShardManifest, Path)) or (isinstance(ids, str)):
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
        self.id_scheme = _check_scheme(id_scheme or "key")
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
                    f"the AdaPruner has {pruner.num_samples} mask entries but there are {len(keys)} sample ids"
                )
            # adopt the given pruner: its parameters, state, device and process group
            super().__init__(len(keys), device=pruner.mask.device, process_group=pruner._process_group,
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
        return cls(load_manifest(manifest), keep_ratio, **kw)

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
            raise PruneDataError(
                "KeyedAdaPruner needs the batch's sample keys (strings from '__key__'), got a tensor; "
                "for map-style data with integer indices use prunedata.AdaPruner"
            )
        ids = _ids_of(keys, urls, self.id_scheme)
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
            logger.warning(
                "KeyedAdaPruner: sample %r came back within epoch %d -- the stream shows samples more than once per "
                "epoch, so the mask learns from repeated samples. Split the shards over DataLoader workers and "
                "ranks (wds.split_by_worker / wds.split_by_node, as pruned_webdataset does), or pass "
                "warn_repeats=False if you sample with replacement (resampled=True)", k, self.epoch)

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
        m = self.mask.detach().cpu().tolist()
        return dict(zip(self.keys, m))

    def selection(self, dataset: Any = None, *, method: str = "adapruner",  # type: ignore[override]
                  extra_params: Optional[Dict[str, Any]] = None) -> Selection:
        """The binarised mask as a keyed :class:`Selection` (scores = mask logits in sorted-id order)."""
        base = super().selection(fingerprint=self.fingerprint, extra_params=extra_params, method=method)
        kept = [self.keys[i] for i in base.kept.tolist()]
        extra = dict(base.extra)
        sel = Selection.from_keys(kept, self.keys, method=base.method, params=base.params,
                                  fingerprint=self.fingerprint, scores=base.scores, score_name=base.score_name,
                                  metrics=base.metrics, extra=extra)
        if self.manifest is not None:
            _annotate_selection(sel, self.manifest, set(kept))
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
                f"{state.get('keys_fingerprint')}); this pruner has {len(self.keys)} ids ({self.fingerprint})"
            )
        super().load_state_dict(state["pruner"], strict=strict)

    def __repr__(self) -> str:
        return (f"KeyedAdaPruner({len(self.keys)} ids, id_scheme={self.id_scheme!r}, keep_ratio="
                f"{self.keep_ratio}, epoch {self.epoch}/{self.epochs})")
