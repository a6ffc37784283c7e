"""Small synthetic detection datasets written to disk in Pascal VOC and YOLO layouts.

Images show filled shapes (square, disk, triangle) on a noisy background; the boxes are the
shapes' extents. Real files, real formats: used by the tests, the example and the benchmark.
Needs only numpy and Pillow (no Detectron2).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np

__all__ = ["SHAPE_CLASSES", "make_voc_dataset", "make_yolo_dataset", "draw_scene"]

SHAPE_CLASSES = ("square", "disk", "triangle")


def draw_scene(rng: np.random.Generator, size: Tuple[int, int], max_objects: int = 3):
    """One RGB image (H, W, 3 uint8) and its objects as (class index, x1, y1, x2, y2) in pixels."""
    from PIL import Image, ImageDraw

    h, w = size
    base = rng.integers(60, 120, size=3)
    arr = np.clip(base + rng.normal(0, 12, size=(h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(arr)
    draw = ImageDraw.Draw(im)
    objs: List[Tuple[int, int, int, int, int]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        c = int(rng.integers(0, len(SHAPE_CLASSES)))
        bw = int(rng.integers(max(8, w // 6), max(9, w // 2)))
        bh = int(rng.integers(max(8, h // 6), max(9, h // 2)))
        x1 = int(rng.integers(0, w - bw))
        y1 = int(rng.integers(0, h - bh))
        x2, y2 = x1 + bw, y1 + bh
        color = tuple(int(v) for v in rng.integers(150, 256, size=3))
        if c == 0:
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=color)
        elif c == 1:
            draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=color)
        else:
            draw.polygon([(x1, y2 - 1), ((x1 + x2) // 2, y1), (x2 - 1, y2 - 1)], fill=color)
        objs.append((c, x1, y1, x2, y2))
    return np.asarray(im), objs


def _scenes(n: int, size: Union[int, Tuple[int, int]], seed: int, vary: bool, max_objects: int):
    """``(index, height, width, image, objects)`` of ``n`` scenes; all sizes are drawn before the scenes."""
    rng = np.random.default_rng(seed)
    h, w = (size, size) if isinstance(size, int) else size
    sizes = [(int(h * rng.uniform(0.75, 1.0)) // 2 * 2, int(w * rng.uniform(0.75, 1.0)) // 2 * 2) if vary else (h, w)
             for _ in range(n)]
    for k, (hk, wk) in enumerate(sizes):
        yield (k, hk, wk, *draw_scene(rng, (hk, wk), max_objects))


def make_voc_dataset(root: Union[str, os.PathLike], n: int = 16, *, size: Union[int, Tuple[int, int]] = 96,
                     split: str = "trainval", seed: int = 0, vary_size: bool = False,
                     max_objects: int = 3) -> Dict[str, object]:
    """Write ``n`` images as a Pascal VOC directory (JPEGImages/, Annotations/, ImageSets/Main/)."""
    from PIL import Image

    root = Path(root)
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    ids = []
    for k, h, w, arr, objs in _scenes(n, size, seed, vary_size, max_objects):
        fid = f"{k:06d}"
        Image.fromarray(arr).save(root / "JPEGImages" / f"{fid}.jpg", quality=95)
        lines = ["<annotation>", "  <folder>VOC</folder>", f"  <filename>{fid}.jpg</filename>",
                 f"  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>"]
        for c, x1, y1, x2, y2 in objs:
            lines += [
                "  <object>", f"    <name>{SHAPE_CLASSES[c]}</name>", "    <pose>Unspecified</pose>",
                "    <truncated>0</truncated>", "    <difficult>0</difficult>",
                # VOC pixel indices are 1-based and inclusive
                f"    <bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>",
                "  </object>",
            ]
        lines.append("</annotation>")
        (root / "Annotations" / f"{fid}.xml").write_text("\n".join(lines) + "\n")
        ids.append(fid)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return {"root": str(root), "ids": ids, "classes": list(SHAPE_CLASSES)}


def make_yolo_dataset(root: Union[str, os.PathLike], n: int = 16, *, size: Union[int, Tuple[int, int]] = 96,
                      split: str = "train", seed: int = 0, vary_size: bool = False, max_objects: int = 3,
                      ext: str = ".png") -> Dict[str, object]:
    """Write ``n`` images as a YOLO directory (images/<split>/, labels/<split>/, classes.txt)."""
    from PIL import Image

    root = Path(root)
    img_dir, lbl_dir = root / "images" / split, root / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(SHAPE_CLASSES) + "\n")
    names = []
    for k, h, w, arr, objs in _scenes(n, size, seed, vary_size, max_objects):
        stem = f"img_{k:04d}"
        Image.fromarray(arr).save(img_dir / f"{stem}{ext}")
        rows = [f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
                for c, x1, y1, x2, y2 in objs]
        (lbl_dir / f"{stem}.txt").write_text("\n".join(rows) + "\n")
        names.append(f"{split}/{stem}")
    return {"root": str(root), "ids": names, "classes": list(SHAPE_CLASSES)}
