"""Classification / torchvision integration: ImageFolder datasets with stable ids and fingerprints."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from prunedata._optional import require
from prunedata.errors import PruneDataError


class ImageReadError(PruneDataError):
    """An image file of a dataset cannot be decoded."""


def default_transform(size: int = 28, grayscale: bool = True):
    T = require("torchvision.transforms", extra="vision", purpose="ImageFolder datasets")

    ops = [T.Grayscale(1)] if grayscale else []
    ops += [T.Resize((size, size)), T.ToTensor()]
    return T.Compose(ops)


def checked_loader(path: str):
    """PIL loader whose errors name the file (a corrupt image otherwise ends in a long traceback)."""
    Image = require("PIL.Image", extra="vision", purpose="reading images")
    try:
        with open(path, "rb") as fh:
            return Image.open(fh).convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"cannot read the image {path} ({e}); remove or replace the file") from None


def image_folder(root: str, transform: Optional[Any] = None, *, classes: Optional[Sequence[str]] = None, **kw):
    """A torchvision ``ImageFolder`` (class sub-folders). Its fingerprint hashes the file list
    relative to ``root``, so the same folder copied elsewhere keeps matching its selections.

    ``classes`` fixes the class names and their order (e.g. the training split's for a test split):
    labels are matched by folder name, so a test split missing a class keeps every other class's
    index; a folder whose name is not among ``classes`` is refused.
    """
    datasets = require("torchvision.datasets", extra="vision", purpose="ImageFolder datasets")
    path = Path(root)
    if not path.is_dir():
        raise PruneDataError(f"{root} is not a directory")
    fixed = sorted(classes) if classes is not None else None
    if fixed is not None:
        unknown = sorted(p.name for p in path.iterdir() if p.is_dir() and p.name not in fixed)
        if unknown:
            raise PruneDataError(f"{root} has class folders {unknown} that the training split does not have; "
                                 f"the classes are {fixed}")
    kw.setdefault("loader", checked_loader)
    try:
        ds = datasets.ImageFolder(str(path), transform=transform or default_transform(), **kw)
    except FileNotFoundError as e:
        raise PruneDataError(f"{root} is not an ImageFolder (one sub-folder of images per class): {e}") from None
    if fixed is not None and ds.classes != fixed:  # relabel by class name (a class may be missing here)
        to_fixed = [fixed.index(c) for c in ds.classes]
        ds.samples = [(p, to_fixed[y]) for p, y in ds.samples]
        ds.imgs = ds.samples
        ds.targets = [y for _, y in ds.samples]
        ds.classes, ds.class_to_idx = list(fixed), {c: i for i, c in enumerate(fixed)}
    return ds
