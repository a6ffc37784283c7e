"""Classification / torchvision integration: ImageFolder datasets with stable ids and fingerprints."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from prunedata.errors import PruneDataError


def default_transform(size: int = 28, grayscale: bool = True):
    from torchvision import transforms as T

    ops = [T.Grayscale(1)] if grayscale else []
    ops += [T.Resize((size, size)), T.ToTensor()]
    return T.Compose(ops)


def image_folder(root: str, transform: Optional[Any] = None, **kw):
    """A torchvision ``ImageFolder`` (class sub-folders). Its fingerprint hashes the file list
    relative to ``root``, so the same folder copied elsewhere keeps matching its selections."""
    from torchvision.datasets import ImageFolder

    path = Path(root)
    if not path.is_dir():
        raise PruneDataError(f"{root} is not a directory")
    try:
        return ImageFolder(str(path), transform=transform or default_transform(), **kw)
    except FileNotFoundError as e:
        raise PruneDataError(f"{root} is not an ImageFolder (one sub-folder of images per class): {e}") from None
