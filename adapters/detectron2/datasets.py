"""Pascal VOC and YOLO directories as Detectron2 datasets, and pruned registrations.

Every record (Detectron2 "dataset dict") carries a stable sample id:

* ``image_id``: the VOC file id (``"000005"``) or the YOLO image path under ``images/`` without its
  suffix (``"train/img_0003"``) -- stable when the dataset is moved or re-listed;
* ``prunedata_index``: the record's position in the registered list, the index AdaPruner's mask
  and the selection file use. Detectron2's ``DatasetMapper`` copies unknown keys, so the index
  travels with each image through the data loader into the training step.

A selection file is checked against :func:`detection_fingerprint` of the dataset it is applied to, and
:func:`register_pruned` registers its kept records under the base's metadata. Bad annotation files
(unparsable XML, missing fields, unknown classes, boxes outside the image, malformed YOLO lines) raise
:class:`AnnotationError` naming the file; with ``on_error="skip"`` the offending box (or, for an
unreadable file, the image) is dropped with a warning instead.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import xml.etree.ElementTree as ET
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from prunedata.errors import PruneDataError, SelectionMismatchError
from prunedata.selection import Selection

from ._require import require_detectron2

require_detectron2()

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["AnnotationError", "VOC_CLASSES", "IMAGE_EXTENSIONS", "load_voc", "load_yolo", "register_voc",
           "register_yolo", "register_pruned", "detection_fingerprint", "index_records", "read_class_names"]

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
INDEX_KEY = "prunedata_index"
BASE_INDEX_KEY = "prunedata_base_index"
# YOLO coordinates are usually written with 6 decimals; allow that much slack at the image border
_YOLO_EPS = 1e-3


class AnnotationError(PruneDataError):
    """An annotation file is malformed or describes boxes outside its image (message names the file)."""


class _Problems:
    """Raise at once (``on_error='raise'``) or collect warnings (``'skip'``)."""

    def __init__(self, on_error: str, what: str):
        self.on_error = _check_on_error(on_error)
        self.what = what
        self.skipped_boxes = 0
        self.skipped_images = 0

    def __call__(self, msg: str, *, image: bool = False) -> None:
        if self.on_error == "raise":
            raise AnnotationError(
                msg + ". Fix the file, or pass on_error='skip' to drop "
                + ("this image" if image else "such boxes") + " with a warning.")
        self.skipped_images += image
        self.skipped_boxes += not image
        logger.warning("%s; skipping the %s", msg, "image" if image else "box")

    def summary(self, n_images: int) -> None:
        if self.skipped_images or self.skipped_boxes:
            logger.warning("%s: skipped %d images and %d boxes with bad annotations (kept %d images)",
                           self.what, self.skipped_images, self.skipped_boxes, n_images)


# --------------------------------------------------------------------------- helpers
def _check_on_error(on_error: str) -> str:
    if on_error not in ("raise", "skip"):
        raise PruneDataError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return on_error


def _check_class_names(names: Sequence[str], source: str) -> List[str]:
    names = [str(n).strip() for n in names]
    if not names:
        raise PruneDataError(f"{source}: the class-name list is empty")
    if any(not n for n in names):
        raise PruneDataError(f"{source}: class names must be non-empty strings, got {names}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PruneDataError(f"{source}: duplicate class names {dup}")
    return names


def read_class_names(source: Union[str, os.PathLike, Sequence[str]]) -> List[str]:
    """Class names from a list, a text file (one per line) or a YOLO ``data.yaml`` (``names:``)."""
    if isinstance(source, (list, tuple)):
        return _check_class_names(source, "class_names")
    path = Path(source)
    if not path.is_file():
        raise PruneDataError(f"class-name file {path} does not exist")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise PruneDataError(f"{path} is not valid YAML: {e}") from None
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict):
            try:
                keys = sorted(int(k) for k in names)
            except (TypeError, ValueError):
                raise PruneDataError(f"{path}: 'names' must map class indices to names") from None
            if keys != list(range(len(keys))):
                raise PruneDataError(f"{path}: 'names' indices must be 0..{len(keys) - 1}, got {keys}")
            names = [names[k] if k in names else names[str(k)] for k in keys]
        if not isinstance(names, list):
            raise PruneDataError(f"{path} has no 'names:' list of class names")
        return _check_class_names(names, str(path))
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return _check_class_names([ln for ln in lines if ln and not ln.startswith("#")], str(path))


def index_records(dicts: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Set ``prunedata_index`` = position in ``dicts`` (in place) and check ``image_id`` is unique."""
    seen: Dict[Any, int] = {}
    for i, d in enumerate(dicts):
        if not isinstance(d, dict):
            raise PruneDataError(f"dataset record {i} is a {type(d).__name__}, expected a dict")
        iid = d.get("image_id", d.get("file_name"))
        if iid is not None:
            if iid in seen:
                raise PruneDataError(f"records {seen[iid]} and {i} have the same image_id {iid!r}; sample ids must be "
                                     "unique so that selections can name images")
            seen[iid] = i
        d[INDEX_KEY] = i
    return dicts


def detection_fingerprint(dicts: Sequence[Dict[str, Any]]) -> str:
    """Hash of the ordered (image_id, file base name) list: same dataset, same order -> same value.

    Base names (not full paths) are used, so a dataset copied to another folder still matches.
    """
    h = hashlib.sha256()
    h.update(f"detection n={len(dicts)}".encode())
    for d in dicts:
        h.update(str(d.get("image_id", "")).encode() + b"\0")
        h.update(os.path.basename(str(d.get("file_name", ""))).encode() + b"\0")
    return "sha256:" + h.hexdigest()[:32]


def _image_size(path: Path, problems: _Problems):
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:  # PIL raises many types for bad files
        problems(f"{path}: cannot read the image ({type(e).__name__}: {e})", image=True)
        return None
    return int(h), int(w)


# --------------------------------------------------------------------------- Pascal VOC
def _voc_layout(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise PruneDataError(f"VOC root {root} is not a directory")
    missing = [d for d in ("Annotations", "JPEGImages", "ImageSets/Main") if not (root / d).is_dir()]
    if missing:
        raise PruneDataError(f"{root} is not a Pascal VOC directory: missing {', '.join(missing)} (expected "
                             "Annotations/, JPEGImages/, ImageSets/Main/<split>.txt)")
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        avail = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise PruneDataError(f"VOC split file {split_file} does not exist; available splits: {avail}")
    return split_file


def _voc_image_path(root: Path, file_id: str, xml_filename: Optional[str]) -> Optional[Path]:
    cands = ([xml_filename] if xml_filename else []) + [file_id + ext for ext in IMAGE_EXTENSIONS]
    return next((root / "JPEGImages" / c for c in cands if (root / "JPEGImages" / c).is_file()), None)


def load_voc(root: Union[str, os.PathLike], split: str = "trainval",
             class_names: Optional[Sequence[str]] = None, *, on_error: str = "raise",
             include_difficult: bool = True) -> List[Dict[str, Any]]:
    """Read a Pascal VOC directory into Detectron2 dataset dicts (boxes in ``XYXY_ABS``).

    Box coordinates follow Detectron2's VOC loader: VOC's 1-based ``xmin``/``ymin`` become
    ``xmin - 1``/``ymin - 1``; ``xmax``/``ymax`` are kept. A box must satisfy
    ``0 <= x1 < x2 <= width`` and ``0 <= y1 < y2 <= height``.
    """
    root = Path(root)
    split_file = _voc_layout(root, split)
    classes = list(VOC_CLASSES) if class_names is None else _check_class_names(class_names, "class_names")
    cls_index = {c: i for i, c in enumerate(classes)}
    problems = _Problems(on_error, f"VOC {root} [{split}]")
    ids = [ln.split()[0] for ln in split_file.read_text().splitlines() if ln.strip()]
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dup:
        raise AnnotationError(f"{split_file}: image ids listed twice: {dup[:5]}")
    records: List[Dict[str, Any]] = []
    for file_id in ids:
        xml_path = root / "Annotations" / f"{file_id}.xml"
        if not xml_path.is_file():
            problems(f"{xml_path}: annotation file is missing (listed in {split_file.name})", image=True)
            continue
        try:
            tree = ET.parse(xml_path)
        except ET.ParseError as e:
            problems(f"{xml_path}: malformed XML ({e})", image=True)
            continue
        ann = tree.getroot()
        fname_el = ann.find("filename")
        img_path = _voc_image_path(root, file_id, fname_el.text.strip() if fname_el is not None and fname_el.text else None)
        if img_path is None:
            problems(f"{xml_path}: no image for id {file_id!r} in {root / 'JPEGImages'}", image=True)
            continue
        size = ann.find("size")
        try:
            width = int(float(size.find("width").text))  # type: ignore[union-attr]
            height = int(float(size.find("height").text))  # type: ignore[union-attr]
            if width <= 0 or height <= 0:
                raise ValueError
        except (AttributeError, TypeError, ValueError):
            hw = _image_size(img_path, problems)
            if hw is None:
                continue
            height, width = hw
            logger.debug("%s: no valid <size>; read %dx%d from the image", xml_path, width, height)
        annotations = []
        for k, obj in enumerate(ann.findall("object")):
            name_el = obj.find("name")
            name = name_el.text.strip() if name_el is not None and name_el.text else None
            where = f"{xml_path}, object {k}"
            if name is None:
                problems(f"{where}: <name> is missing")
                continue
            if name not in cls_index:
                problems(f"{where}: class {name!r} is not among the {len(classes)} class names "
                         f"({', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''}); pass class_names=")
                continue
            diff_el = obj.find("difficult")
            difficult = int(diff_el.text) if diff_el is not None and (diff_el.text or "").strip().isdigit() else 0
            if difficult and not include_difficult:
                continue
            bb = obj.find("bndbox")
            try:
                xmin, ymin, xmax, ymax = (float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr]
            except (AttributeError, TypeError, ValueError):
                problems(f"{where}: <bndbox> needs numeric xmin, ymin, xmax, ymax")
                continue
            x1, y1, x2, y2 = xmin - 1.0, ymin - 1.0, xmax, ymax
            if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
                problems(f"{where}: box coordinates are not finite")
                continue
            if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
                problems(f"{where}: box (xmin={xmin:g}, ymin={ymin:g}, xmax={xmax:g}, ymax={ymax:g}) is outside the "
                         f"{width}x{height} image or empty (VOC needs 1 <= xmin < xmax <= width, "
                         "1 <= ymin < ymax <= height)")
                continue
            annotations.append({"category_id": cls_index[name], "bbox": [x1, y1, x2, y2],
                                "bbox_mode": BoxMode.XYXY_ABS, "iscrowd": 0, "difficult": difficult})
        records.append({"file_name": str(img_path), "image_id": file_id, "height": height, "width": width,
                        "annotations": annotations})
    problems.summary(len(records))
    return index_records(records)


# --------------------------------------------------------------------------- YOLO
def _yolo_layout(root: Path, split: Optional[str], images: str = "images", labels: str = "labels"):
    """The image and label folders of a YOLO directory."""
    if not root.is_dir():
        raise PruneDataError(f"YOLO root {root} is not a directory")
    dirs = tuple(root / sub / split if split else root / sub for sub in (images, labels))
    for d in dirs:
        if not d.is_dir():
            raise PruneDataError(f"{root} is not a YOLO directory: {d} does not exist (expected images/ and labels/)")
    return dirs


def _yolo_class_names(root: Path, class_names: Any) -> List[str]:
    if class_names is not None:
        return read_class_names(class_names)
    for cand in ("classes.txt", "obj.names", "data.yaml", "dataset.yaml"):
        if (root / cand).is_file():
            return read_class_names(root / cand)
    raise PruneDataError(f"no class-name list for YOLO dataset {root}: pass class_names=[...] or a file, or put "
                         "classes.txt (one name per line), obj.names or data.yaml (names: [...]) in the root")


def load_yolo(root: Union[str, os.PathLike], split: Optional[str] = None,
              class_names: Union[None, str, os.PathLike, Sequence[str]] = None, *,
              on_error: str = "raise", images: str = "images", labels: str = "labels") -> List[Dict[str, Any]]:
    """Read a YOLO directory (``images/[split/]...`` + ``labels/[split/]....txt``).

    Each label line is ``class cx cy w h`` with coordinates normalised to [0, 1]; an image without
    a label file (or with an empty one) has no objects. Boxes may exceed the border by ``1e-3``
    (rounding) and are clipped; beyond that they are an error.
    """
    root = Path(root)
    img_dir, lbl_dir = _yolo_layout(root, split, images, labels)
    classes = _yolo_class_names(root, class_names)
    problems = _Problems(on_error, f"YOLO {img_dir}")
    files = sorted(p for p in img_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise PruneDataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {img_dir}")
    records: List[Dict[str, Any]] = []
    seen_ids: Dict[str, Path] = {}
    for img_path in files:
        rel = img_path.relative_to(img_dir).with_suffix("")
        image_id = (Path(split) / rel).as_posix() if split else rel.as_posix()
        if image_id in seen_ids:
            problems(f"{img_path}: same image id {image_id!r} as {seen_ids[image_id]} (two images differ only "
                     "by suffix)", image=True)
            continue
        seen_ids[image_id] = img_path
        hw = _image_size(img_path, problems)
        if hw is None:
            continue
        height, width = hw
        lbl_path = lbl_dir / rel.with_suffix(".txt")
        annotations = []
        if lbl_path.is_file():
            try:
                text = lbl_path.read_text()
            except (OSError, UnicodeDecodeError) as e:
                problems(f"{lbl_path}: cannot read the label file ({e})", image=True)
                continue
            for ln_no, line in enumerate(text.splitlines(), start=1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                where = f"{lbl_path}, line {ln_no}"
                parts = line.split()
                if len(parts) != 5:
                    problems(f"{where}: expected 5 fields 'class cx cy w h', got {len(parts)}: {line[:60]!r}")
                    continue
                try:
                    cls_f, cx, cy, bw, bh = (float(v) for v in parts)
                except ValueError:
                    problems(f"{where}: fields must be numbers: {line[:60]!r}")
                    continue
                if not cls_f.is_integer() or not 0 <= cls_f < len(classes):
                    problems(f"{where}: class {parts[0]!r} is not an index in 0..{len(classes) - 1} "
                             f"({len(classes)} class names)")
                    continue
                if not all(math.isfinite(v) for v in (cx, cy, bw, bh)) or bw <= 0 or bh <= 0:
                    problems(f"{where}: box needs finite coordinates and w, h > 0: {line[:60]!r}")
                    continue
                x1, y1, x2, y2 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
                if x1 < -_YOLO_EPS or y1 < -_YOLO_EPS or x2 > 1 + _YOLO_EPS or y2 > 1 + _YOLO_EPS:
                    problems(f"{where}: box (cx={cx:g}, cy={cy:g}, w={bw:g}, h={bh:g}) reaches outside the image "
                             "(normalised corners must lie in [0, 1]; are the coordinates in pixels instead?)")
                    continue
                x1, y1 = max(x1, 0.0) * width, max(y1, 0.0) * height
                x2, y2 = min(x2, 1.0) * width, min(y2, 1.0) * height
                annotations.append({"category_id": int(cls_f), "bbox": [x1, y1, x2, y2],
                                    "bbox_mode": BoxMode.XYXY_ABS, "iscrowd": 0})
        records.append({"file_name": str(img_path), "image_id": image_id, "height": height, "width": width,
                        "annotations": annotations})
    problems.summary(len(records))
    return index_records(records)


# --------------------------------------------------------------------------- registration
def _register(name: str, overwrite: bool, loader, **metadata: Any) -> str:
    """Register ``loader`` and ``metadata`` as ``name`` (replacing an earlier ``name`` only with ``overwrite``)."""
    if not isinstance(name, str) or not name:
        raise PruneDataError(f"dataset name must be a non-empty string, got {name!r}")
    if name in DatasetCatalog.list():
        if not overwrite:
            raise PruneDataError(f"a dataset named {name!r} is already registered in Detectron2's DatasetCatalog; pick "
                                 "another name or pass overwrite=True")
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)
    return name


def register_voc(name: str, root: Union[str, os.PathLike], split: str = "trainval",
                 class_names: Optional[Sequence[str]] = None, *, on_error: str = "raise",
                 include_difficult: bool = True, year: int = 2012, overwrite: bool = False) -> str:
    """Register a Pascal VOC directory as ``name``; returns ``name``.

    The layout is checked now; annotations are read when Detectron2 loads the dataset
    (``DatasetCatalog.get(name)``). Metadata: ``thing_classes``, ``dirname``, ``split``, ``year``
    and ``evaluator_type="pascal_voc"`` (as Detectron2's own VOC registration), plus
    ``prunedata_root``.
    """
    root = Path(root).resolve()
    _voc_layout(root, split)
    classes = list(VOC_CLASSES) if class_names is None else _check_class_names(class_names, "class_names")
    loader = partial(load_voc, root, split, classes, on_error=_check_on_error(on_error),
                     include_difficult=include_difficult)
    return _register(name, overwrite, loader, thing_classes=classes, dirname=str(root), split=split, year=year,
                     evaluator_type="pascal_voc", prunedata_root=str(root))


def register_yolo(name: str, root: Union[str, os.PathLike], split: Optional[str] = None,
                  class_names: Union[None, str, os.PathLike, Sequence[str]] = None, *,
                  on_error: str = "raise", overwrite: bool = False) -> str:
    """Register a YOLO directory (``images/`` + ``labels/``) as ``name``; returns ``name``.

    ``class_names``: a list, a file (one name per line, or a ``data.yaml`` with ``names:``), or
    ``None`` to read ``classes.txt``/``obj.names``/``data.yaml`` from the root.
    """
    root = Path(root).resolve()
    _yolo_layout(root, split)
    classes = _yolo_class_names(root, class_names)
    return _register(name, overwrite, partial(load_yolo, root, split, classes, on_error=_check_on_error(on_error)),
                     thing_classes=classes, dirname=str(root), split=split or "", prunedata_root=str(root))


def _pruned_records(base_name: str, selection: Selection, strict: bool) -> List[Dict[str, Any]]:
    base = DatasetCatalog.get(base_name)
    fp = detection_fingerprint(base)
    try:
        selection.check(size=len(base), fingerprint=fp, strict=strict)
    except SelectionMismatchError as e:
        raise SelectionMismatchError(f"selection does not belong to dataset {base_name!r}: {e}") from None
    return [{**base[i], BASE_INDEX_KEY: i, INDEX_KEY: j} for j, i in enumerate(selection.kept.tolist())]


def register_pruned(base_name: str, selection: Union[str, os.PathLike, Selection], name: Optional[str] = None,
                    *, strict: bool = True, verify: bool = True, overwrite: bool = False) -> str:
    """Register the images of ``base_name`` kept by ``selection`` as ``name`` (default ``<base>_pruned``).

    The new dataset has the base's metadata (classes, evaluator settings), so any config trains on
    it by changing only ``DATASETS.TRAIN``. Records keep their ``image_id``; ``prunedata_index`` is
    their position in the pruned list and ``prunedata_base_index`` their index in the base list.
    With ``verify`` the selection is checked against the base dataset now (length and
    fingerprint); otherwise when the dataset is first loaded.
    """
    if base_name not in DatasetCatalog.list():
        raise PruneDataError(f"base dataset {base_name!r} is not registered in Detectron2's DatasetCatalog; register "
                             "it first (register_voc / register_yolo / your own registration)")
    sel = selection if isinstance(selection, Selection) else Selection.load(selection)
    if sel.id_kind != "index":
        raise PruneDataError("a detection selection must be by index (id_kind='index'); this one is keyed")
    name = name or f"{base_name}_pruned"
    if name == base_name:
        raise PruneDataError("the pruned dataset needs a name different from its base")
    if verify:
        _pruned_records(base_name, sel, strict)
    meta = {k: v for k, v in MetadataCatalog.get(base_name).as_dict().items() if k != "name"}
    meta.update(prunedata_base=base_name, prunedata_selection_method=sel.method, prunedata_kept=sel.num_kept)
    if not isinstance(selection, Selection):
        meta["prunedata_selection"] = str(Path(selection).resolve())
    _register(name, overwrite, partial(_pruned_records, base_name, sel, strict), **meta)
    logger.info("registered %s: %d of %d images of %s (%s)", name, sel.num_kept, sel.dataset_size, base_name,
                sel.method)
    return name
