"""The selection file: which samples to keep, how they were chosen, and for which dataset.

A selection is written as JSON (gzip-compressed when the name ends in ``.gz``), atomically, with
the small descriptive fields first and one line per array, so ``head`` or ``prunedata show`` tell a
person what it is. Loading it against a dataset of another length, key set or fingerprint raises
:class:`~prunedata.errors.SelectionMismatchError`.

Samples are identified by index (map-style datasets) or by key (webdataset streams); see
:mod:`prunedata.identity`.
"""
from __future__ import annotations

import datetime as _dt
import functools
import gzip
import json
import math
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from . import __version__
from ._io import PathLike, atomic_write_bytes
from .errors import SelectionFormatError, SelectionMismatchError
from .identity import dataset_fingerprint, keys_fingerprint

logger = logging.getLogger(__name__)

FORMAT = "prunedata.selection"
FORMAT_VERSION = 1

__all__ = ["Selection", "load_selection", "FORMAT_VERSION"]


def _json_default(o: Any):
    if isinstance(o, (np.generic, np.ndarray)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


@dataclass
class Selection:
    """Kept sample ids of one dataset plus how they were chosen.

    Parameters
    ----------
    kept:
        Kept indices (``id_kind='index'``), any order; stored sorted and unique.
    dataset_size:
        Number of samples in the full dataset.
    method, params:
        Name of the method and its parameters (JSON-serialisable).
    fingerprint:
        :func:`~prunedata.identity.dataset_fingerprint` of the dataset (or of the key set).
    scores:
        Optional per-sample values (length ``dataset_size``), e.g. final mask logits or EL2N scores;
        ``score_name`` says what they are.
    metrics:
        Results worth keeping with the selection (achieved norm, certified bound, keep ratio, ...).
    keys:
        For stream datasets (``id_kind='key'``): the kept keys. ``kept`` is then their position in
        the sorted full key list when that is known, otherwise empty.
    extra:
        Free-form per-sample metadata, e.g. image ids and file names of kept detection images.
    """

    kept: np.ndarray
    dataset_size: int
    method: str = "unknown"
    params: Dict[str, Any] = field(default_factory=dict)
    fingerprint: Optional[str] = None
    scores: Optional[np.ndarray] = None
    score_name: Optional[str] = None
    metrics: Dict[str, Any] = field(default_factory=dict)
    keys: Optional[List[str]] = None
    id_kind: str = "index"
    extra: Dict[str, Any] = field(default_factory=dict)
    created: Optional[str] = None

    def __post_init__(self) -> None:
        self.dataset_size = _count(self.dataset_size, "dataset_size")
        if self.id_kind not in ("index", "key"):
            raise SelectionFormatError(f"id_kind must be 'index' or 'key', got {self.id_kind!r}")
        kept = _integer_ids(self.kept if self.kept is not None else [])
        if kept.size:
            kept = np.unique(kept)
            if kept[0] < 0 or kept[-1] >= self.dataset_size:
                raise SelectionFormatError(f"kept indices must lie in [0, {self.dataset_size}); found "
                                           f"{int(kept[0])}..{int(kept[-1])}. Was the selection made for a larger "
                                           "dataset?")
        self.kept = kept
        if self.id_kind == "key":
            if self.keys is None:
                raise SelectionFormatError("a keyed selection (id_kind='key') needs `keys`")
            self.keys = sorted(set(str(k) for k in self.keys))
            if len(self.keys) > self.dataset_size:
                raise SelectionFormatError(f"{len(self.keys)} kept keys but the key set has only {self.dataset_size} "
                                           "keys")
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
            if self.scores.size != self.dataset_size:
                raise SelectionFormatError(f"scores has {self.scores.size} entries, expected one per sample "
                                           f"({self.dataset_size})")
        if self.created is None:
            self.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_mask(cls, mask: Union[np.ndarray, Sequence[bool]], **kw) -> "Selection":
        """Build from a boolean keep-mask of length ``dataset_size``."""
        mask = np.asarray(mask, dtype=bool).reshape(-1)
        return cls(kept=np.flatnonzero(mask), dataset_size=mask.size, **kw)

    @classmethod
    def from_keys(cls, kept_keys: Iterable[str], all_keys: Iterable[str], **kw) -> "Selection":
        """Build a keyed (stream) selection; ``all_keys`` is the full key set of the dataset."""
        all_sorted = sorted(set(str(k) for k in all_keys))
        kept_set = set(str(k) for k in kept_keys)
        unknown = kept_set.difference(all_sorted)
        if unknown:
            raise SelectionFormatError(f"{len(unknown)} kept keys are not in the dataset's key set, e.g. "
                                       f"{sorted(unknown)[:3]}")
        pos = np.array([i for i, k in enumerate(all_sorted) if k in kept_set], dtype=np.int64)
        kw.setdefault("fingerprint", keys_fingerprint(all_sorted))
        return cls(kept=pos, dataset_size=len(all_sorted), keys=sorted(kept_set), id_kind="key", **kw)

    # ------------------------------------------------------------------ views
    @property
    def num_kept(self) -> int:
        return len(self.keys) if self.id_kind == "key" else int(self.kept.size)

    @property
    def num_pruned(self) -> int:
        return self.dataset_size - self.num_kept

    @property
    def keep_ratio(self) -> float:
        return self.num_kept / self.dataset_size if self.dataset_size else 0.0

    @property
    def prune_ratio(self) -> float:
        return 1.0 - self.keep_ratio

    @property
    def mask(self) -> np.ndarray:
        """Boolean keep-mask over the dataset (index selections)."""
        self._require_index("mask")
        m = np.zeros(self.dataset_size, dtype=bool)
        m[self.kept] = True
        return m

    @property
    def pruned(self) -> np.ndarray:
        """Indices of pruned samples."""
        return np.flatnonzero(~self.mask)

    @functools.cached_property
    def key_set(self) -> frozenset:
        if self.id_kind != "key":
            raise SelectionFormatError("this selection is by index; it has no keys")
        return frozenset(self.keys or ())

    def __contains__(self, sample_id: Union[int, str]) -> bool:
        if self.id_kind == "key":
            return str(sample_id) in self.key_set
        i = int(sample_id)
        pos = np.searchsorted(self.kept, i)
        return bool(pos < self.kept.size and self.kept[pos] == i)

    def __len__(self) -> int:
        return self.num_kept

    def _require_index(self, what: str) -> None:
        if self.id_kind != "index":
            raise SelectionFormatError(f"{what} needs an index selection; this one is keyed by sample key. Use "
                                       "prunedata.adapters.webdataset.select_keys(...) on a stream instead.")

    def class_counts(self, labels: Sequence[int]) -> Dict[int, Dict[str, int]]:
        """Per-class kept and total counts, given labels for every sample of the dataset."""
        self._require_index("class_counts")
        labels = np.asarray(labels).reshape(-1)
        if labels.size != self.dataset_size:
            raise SelectionMismatchError(f"got {labels.size} labels for a selection of a {self.dataset_size}-sample "
                                         "dataset")
        total = Counter(labels.tolist())
        kept = Counter(labels[self.kept].tolist())
        return {int(c): {"kept": int(kept.get(c, 0)), "total": int(total[c])} for c in sorted(total)}

    def summary(self) -> str:
        lines = [
            f"method      : {self.method}",
            f"ids         : {self.id_kind}",
            f"dataset size: {self.dataset_size}",
            f"kept        : {self.num_kept} ({100 * self.keep_ratio:.2f}%)",
            f"pruned      : {self.num_pruned} ({100 * self.prune_ratio:.2f}%)",
            f"fingerprint : {self.fingerprint}",
            f"created     : {self.created}",
        ]
        if self.params:
            lines.append("params      : " + json.dumps(self.params, default=_json_default, sort_keys=True))
        if self.metrics:
            lines.append("metrics     : " + json.dumps(self.metrics, default=_json_default, sort_keys=True))
        if self.scores is not None:
            s = self.scores
            lines.append(f"scores      : {self.score_name or 'score'} min={s.min():.4g} median={np.median(s):.4g} "
                         f"max={s.max():.4g}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ validation
    def check(self, dataset: Any = None, *, size: Optional[int] = None, fingerprint: Optional[str] = None,
              strict: bool = True) -> "Selection":
        """Raise :class:`SelectionMismatchError` unless this selection belongs to ``dataset``.

        ``dataset`` may be a map-style dataset; alternatively pass ``size``/``fingerprint``
        directly (streams). With ``strict=False`` a fingerprint mismatch only logs a warning;
        a length mismatch is always an error.
        """
        if dataset is not None:
            size = len(dataset)
        if size is not None and int(size) != self.dataset_size:
            raise SelectionMismatchError(f"selection was made for a dataset of {self.dataset_size} samples (method "
                                         f"{self.method!r}) but this dataset has {size}. Use the selection file made "
                                         "for this dataset, or re-run pruning on it.")
        if self.fingerprint is not None and (dataset is not None or fingerprint is not None):
            fp = fingerprint if fingerprint is not None else dataset_fingerprint(dataset)
            if fp != self.fingerprint:
                msg = (f"selection fingerprint {self.fingerprint} does not match this dataset's {fp}: same length, "
                       "different content or order (other labels, files or samples). Use the selection made for "
                       "this dataset, or load with strict=False if you know the datasets are the same.")
                if strict:
                    raise SelectionMismatchError(msg)
                logger.warning(msg)
        return self

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> Dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "method": self.method, "id_kind": self.id_kind,
                "dataset_size": self.dataset_size, "num_kept": self.num_kept, "keep_ratio": round(self.keep_ratio, 6),
                "fingerprint": self.fingerprint, "created": self.created, "params": self.params,
                "metrics": self.metrics, "score_name": self.score_name, "prunedata_version": __version__}

    def to_json(self) -> str:
        head = json.dumps(self.to_dict(), indent=2, default=_json_default)
        arrays: List[str] = []
        if self.id_kind == "key":
            arrays.append('  "keys": ' + json.dumps(self.keys, separators=(",", ":")))
        arrays.append('  "kept": ' + json.dumps(self.kept.tolist(), separators=(",", ":")))
        if self.scores is not None:  # 7 significant digits keep the file small
            scores = [float(f"{v:.7g}") for v in self.scores.tolist()]
            arrays.append('  "scores": ' + json.dumps(scores, separators=(",", ":")))
        if self.extra:
            arrays.append('  "extra": ' + json.dumps(self.extra, separators=(",", ":"), default=_json_default))
        return head[:-2] + ",\n" + ",\n".join(arrays) + "\n}\n"

    def save(self, path: PathLike) -> Path:
        """Write atomically; ``.gz`` suffix compresses. Returns the path."""
        path = Path(path)
        data = self.to_json().encode("utf-8")
        if path.suffix == ".gz":
            data = gzip.compress(data, mtime=0)
        atomic_write_bytes(path, data)
        logger.info("wrote selection %s (%d of %d kept, method %s)", path, self.num_kept, self.dataset_size, self.method)
        return path

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Selection":
        if d.get("format") != FORMAT:
            raise SelectionFormatError(f"not a prunedata selection (format={d.get('format')!r})")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise SelectionFormatError(f"selection format version {version} is not supported by this prunedata (reads "
                                       f"version {FORMAT_VERSION}); upgrade prunedata or re-create the selection")
        kept_raw = d.get("kept", [])
        if not isinstance(kept_raw, list):
            raise SelectionFormatError(f"selection file's 'kept' must be a list of sample ids, got "
                                       f"{type(kept_raw).__name__}")
        try:
            sel = cls(kept=kept_raw, dataset_size=d["dataset_size"], method=d.get("method", "unknown"),
                      params=d.get("params") or {}, fingerprint=d.get("fingerprint"),
                      scores=None if d.get("scores") is None else np.asarray(d["scores"], dtype=np.float64),
                      score_name=d.get("score_name"), metrics=d.get("metrics") or {}, keys=d.get("keys"),
                      id_kind=d.get("id_kind", "index"), extra=d.get("extra") or {}, created=d.get("created"))
        except KeyError as e:
            raise SelectionFormatError(f"selection file lacks the field {e}") from None
        listed = len(d.get("keys") or []) if sel.id_kind == "key" else len(kept_raw)
        if listed != sel.num_kept:
            raise SelectionFormatError(f"selection file lists {listed} ids but only {sel.num_kept} distinct ones "
                                       f"({listed - sel.num_kept} duplicated): the file was edited or damaged; "
                                       "re-create it")
        if "num_kept" in d and _count(d["num_kept"], "num_kept") != sel.num_kept:
            raise SelectionFormatError(f"selection file says num_kept={d['num_kept']} but lists {sel.num_kept} ids: "
                                       "the file was edited or damaged")
        return sel

    @classmethod
    def load(cls, path: PathLike, dataset: Any = None, *, strict: bool = True) -> "Selection":
        """Read a selection; when ``dataset`` is given, check it belongs to that dataset."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"selection file {path} does not exist")
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError) as e:
                raise SelectionFormatError(f"{path}: corrupt gzip data ({e})") from None
        try:
            d = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SelectionFormatError(f"{path} is not a readable selection file: {e}") from None
        if not isinstance(d, dict):
            raise SelectionFormatError(f"{path}: top level must be a JSON object")
        sel = cls.from_dict(d)
        return sel.check(dataset, strict=strict) if dataset is not None else sel


def _count(value: Any, name: str) -> int:
    """``value`` as a non-negative int, refusing text, booleans, NaN and fractions."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok and isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        ok = True
    if not ok:
        raise SelectionFormatError(f"{name} must be a whole number of samples, got {value!r}: the selection file "
                                   "was edited or damaged; re-create it")
    if int(value) < 0:
        raise SelectionFormatError(f"{name} must be >= 0, got {value}")
    return int(value)


def _integer_ids(values: Any) -> np.ndarray:
    """Sample ids as int64, refusing fractions, NaN, booleans and text (never truncating them)."""
    def refuse(found: Any) -> SelectionFormatError:
        return SelectionFormatError(f"kept ids must be whole numbers (sample indices); found {found}: the selection "
                                    "was edited or damaged; re-create it")

    if isinstance(values, (list, tuple)) and any(isinstance(v, (bool, str)) or v is None for v in values):
        raise refuse([v for v in values if isinstance(v, (bool, str)) or v is None][:3])
    arr = np.asarray(values)
    if arr.dtype == object or arr.dtype.kind in "USb":
        bad = [v for v in arr.reshape(-1).tolist()
               if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer())]
        if bad or arr.dtype.kind == "b":
            raise refuse(bad[:3] or "booleans")
        arr = np.asarray([float(v) for v in arr.reshape(-1).tolist()])
    if arr.dtype.kind == "f":
        flat = arr.reshape(-1)
        bad_mask = ~np.isfinite(flat) | (flat != np.round(flat))
        if bad_mask.any():
            raise refuse(flat[bad_mask][:3].tolist())
    elif arr.size and arr.dtype.kind not in "iu":
        raise SelectionFormatError(f"kept ids must be whole numbers (sample indices), got dtype {arr.dtype}")
    return arr.astype(np.int64).reshape(-1)


def load_selection(path: PathLike, dataset: Any = None, *, strict: bool = True) -> Selection:
    """Alias of :meth:`Selection.load`."""
    return Selection.load(path, dataset, strict=strict)
