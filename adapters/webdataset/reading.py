"""Raw, strict reading of tar shards: every member checked, errors name the shard and member."""
from __future__ import annotations

import logging
import tarfile
from typing import Any, Callable, Dict, Iterator, List, Optional

from webdataset.gopen import gopen
from webdataset.handlers import reraise_exception
from webdataset.tariterators import base_plus_ext

from prunedata.errors import PruneDataError
from prunedata.progress import progress
from .ids import Handler, check_scheme
from .manifest import ShardInfo, ShardManifest, UrlsLike, expand_shards

logger = logging.getLogger(__name__)


def _meta(fname: str) -> bool:
    return "/" not in fname and fname.startswith("__") and fname.endswith("__")


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
            raise tarfile.ReadError(f"tar data ends or breaks at byte {tf.offset} without the end-of-archive marker "
                                    f"({e}): the shard is truncated or corrupt") from None


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
            exn.args = (f"{exn.args[0]} @ {url}", *exn.args[1:]) if exn.args else (f"@ {url}",)  # name the shard
            if errors is not None:
                errors.append({"url": url, "error": f"{type(exn).__name__}: {exn}"})
            if not handler(exn):
                break


def scan_shards(urls: UrlsLike, *, id_scheme: str = "key", handler: Handler = reraise_exception,
                show_progress: bool = True) -> ShardManifest:
    """One pass over the shards reading tar headers only: the key set and stream order.

    Broken shards raise by default; with a continuing handler the keys read before the break are
    kept and the error is listed in ``manifest.extra["errors"]`` (and ``complete`` is False).
    """
    check_scheme(id_scheme)
    url_list = expand_shards(urls)
    errors: List[Dict[str, str]] = []
    done: List[str] = []
    keys: Dict[str, List[str]] = {u: [] for u in url_list}
    it = iter_raw_samples(url_list, read_data=False, handler=handler, errors=errors, done=done)
    for s in progress(it, desc="scanning shards", disable=not show_progress):
        keys[s["__url__"]].append(s["__key__"])
    reached = set(done) | {e["url"] for e in errors}
    shards = [ShardInfo(url=u, keys=keys[u]) for u in url_list if u in reached]
    return ShardManifest(shards, id_scheme=id_scheme, complete=len(done) == len(url_list),
                         extra={"errors": errors} if errors else {})
