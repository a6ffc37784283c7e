"""Sample ids of a shard stream (``key`` or ``shard/key``), shard names and URL expansion."""
from __future__ import annotations

import re
from typing import Callable, List, Optional, Sequence, Union

from prunedata.errors import PruneDataError

ID_SCHEMES = ("key", "shard/key")
MANIFEST_FORMAT = "prunedata.shards"
MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"

Handler = Callable[[BaseException], bool]


class ManifestError(PruneDataError):
    """A shard manifest is unreadable or inconsistent (duplicate ids, unknown format, ...)."""


class IncompleteShardError(PruneDataError):
    """A shard yielded fewer kept samples than the selection recorded for it (truncated or corrupt)."""


def shard_name(url: str) -> str:
    """The shard's file name (last path component of the URL, query string removed)."""
    u = str(url)
    if u.startswith("pipe:"):
        # e.g. "pipe:curl -s http://host/a/train-0001.tar" -> the last word that looks like a file
        words = [w for w in re.split(r"\s+", u[5:]) if w and not w.startswith("-")]
        u = words[-1] if words else u
    u = u.split("?", 1)[0].rstrip("/")
    return u.rsplit("/", 1)[-1]


def check_scheme(id_scheme: str) -> str:
    if id_scheme not in ID_SCHEMES:
        raise PruneDataError(f"id_scheme must be one of {ID_SCHEMES}, got {id_scheme!r}")
    return id_scheme


def sample_id(key: str, url: Optional[str] = None, id_scheme: str = "key") -> str:
    """The id of a sample: its ``__key__``, or ``"<shard name>/<key>"`` for ``id_scheme='shard/key'``."""
    if check_scheme(id_scheme) == "key":
        return str(key)
    if url is None:
        raise PruneDataError("id_scheme='shard/key' needs the shard of every sample; keep '__url__' in the samples "
                             "(and pass the batch's '__url__' list next to its '__key__' list)")
    return f"{shard_name(url)}/{key}"


def ids_of(keys: Sequence[str], urls: Union[None, str, Sequence[str]], id_scheme: str) -> List[str]:
    """The ids of ``keys``; ``urls`` is one shard's URL for all of them or one URL per key."""
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
