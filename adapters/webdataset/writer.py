"""Write pruned shards: copy the kept samples into new shards with a manifest, resumable shard by shard."""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import webdataset as wds
from webdataset.handlers import reraise_exception

from prunedata.errors import PruneDataError, SelectionMismatchError
from prunedata.progress import progress
from prunedata.selection import Selection
from .ids import Handler, MANIFEST_NAME, sample_id, shard_name
from .manifest import ShardInfo, ShardManifest, UrlsLike, expand_shards, is_local, load_manifest
from .reading import iter_raw_samples
from .selections import resolve_selection
from .stage import SelectKeys

logger = logging.getLogger(__name__)


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
    sel = resolve_selection(selection, man)
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
                f"({len(unknown)} of {len(urls)} shards). Use the selection made for these shards.")
    if repack and "%" not in pattern:
        raise PruneDataError(f"pattern must contain a %-format for the shard number (e.g. 'pruned-%06d.tar'), got {pattern!r}")
    # refuse to overwrite the shards being read, or an earlier output
    out_dir.mkdir(parents=True, exist_ok=True)
    out_resolved = out_dir.resolve()
    local_inputs = {Path(u).resolve() for u in urls if is_local(u)}
    if not repack:
        names = [shard_name(u) for u in urls]
        dup = [n for n, c in Counter(names).items() if c > 1]
        if dup:
            raise PruneDataError(f"two source shards are called {dup[0]!r}; pass maxcount=... to repack into new names")
        clash = [n for n in names if (out_resolved / n) in local_inputs]
        if clash:
            raise PruneDataError(f"out_dir {out_dir} holds the source shard {clash[0]!r}; writing there would "
                                 "overwrite the data being read. Choose another out_dir.")
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
        tmp = out_dir / f".{name}.partial"
        fh = open(tmp, "wb")
        state.update(fh=fh, tw=wds.TarWriter(fh, encoder=False, mtime=0, compress=name.endswith((".gz", ".tgz"))),
                     tmp=tmp, final=out_dir / name, keys=[], size=0)

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
                if (state["tw"] is None or (maxcount is not None and len(state["keys"]) >= int(maxcount))
                        or (maxsize is not None and state["size"] >= float(maxsize))):  # none open, or it is full
                    close_shard()
                    open_shard(pattern % state["n"])
                    state["n"] += 1
            elif state["src"] != url or state["tw"] is None:
                close_shard()
                open_shard(shard_name(url))
            state["src"] = url
            rec = {k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")}  # no __url__
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
