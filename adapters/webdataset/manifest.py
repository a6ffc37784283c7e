"""Shard manifests: what each shard holds (ids, counts, sizes), scanned once and saved next to the shards."""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from webdataset.shardlists import expand_urls

from prunedata._io import atomic_write_text
from prunedata.errors import PruneDataError
from prunedata.identity import keys_fingerprint
from .ids import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, ManifestError, check_scheme, ids_of, shard_name

logger = logging.getLogger(__name__)


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
        self.id_scheme = check_scheme(id_scheme)
        self.complete = bool(complete)
        self.extra = dict(extra or {})
        self._ids: Optional[List[str]] = None
        self._check_unique()

    # ids
    def ids(self) -> List[str]:
        """Sample ids in stream order (shards in order, samples in shard order)."""
        if self._ids is None:
            self._ids = [i for s in self.shards for i in ids_of(s.keys, s.url, self.id_scheme)]
        return self._ids

    def _check_unique(self) -> None:
        if self.id_scheme == "shard/key":
            names = Counter(s.name for s in self.shards)
            dup = [n for n, c in names.items() if c > 1]
            if dup:
                raise ManifestError(f"shard file name {dup[0]!r} appears {names[dup[0]]} times; with "
                                    "id_scheme='shard/key' shard names must be unique. Rename the shards.")
        ids = self.ids()
        if len(set(ids)) != len(ids):
            seen: Dict[str, str] = {}
            for s in self.shards:
                for k in ids_of(s.keys, s.url, self.id_scheme):
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
                "make one with prunedata.adapters.webdataset.scan_shards(urls).save(path)")
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


UrlsLike = Union[str, Sequence[str], ShardManifest, Path]


def is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _relative(url: str, root: Optional[Path]) -> str:
    if root is None or not is_local(url):
        return url
    p = Path(url.removeprefix("file:")).resolve()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _absolute(url: str, root: Path) -> str:
    if not is_local(url) or os.path.isabs(url):
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
                    f"'{urls}/train-{{000000..000099}}.tar') or write a manifest with scan_shards(urls).save(...)")
            return ShardManifest.load(os.path.join(urls, MANIFEST_NAME)).urls
        out = expand_urls(urls)
    else:
        out = [str(u) for u in urls]
    if not out:
        raise PruneDataError("no shard URLs given")
    return out
