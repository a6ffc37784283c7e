"""Small datasets written in the on-disk layouts of torchvision's datasets (shared by the tests).

The images' mean brightness encodes the class, so models trained on them learn something.
"""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

N_TRAIN, N_TEST = 120, 60


def _images(rng, n, shape):
    """Random uint8 images whose mean brightness encodes the class (so models can learn them)."""
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 60, (n,) + shape).astype(np.int64) + (y * 19).reshape((n,) + (1,) * len(shape))
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def make_mnist_like(root: Path, folder: str, *, gz: bool, seed: int = 0) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        x, y = _images(rng, n, (28, 28))
        _write_idx(raw / f"{split}-images-idx3-ubyte", x, gz)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", y.astype(np.uint8), gz)


def make_cifar(root: Path, hundred: bool = False, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"

    def dump(name, n):
        x, y = _images(rng, n, (3, 32, 32))
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": x.reshape(n, -1), label_key: y.tolist(), "batch_label": name}, fh)

    if hundred:
        dump("train", N_TRAIN)
        dump("test", N_TEST)
        with open(folder / "meta", "wb") as fh:
            pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, fh)
    else:
        for i in range(1, 6):
            dump(f"data_batch_{i}", N_TRAIN // 5)
        dump("test_batch", N_TEST)
        with open(folder / "batches.meta", "wb") as fh:
            pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                         "ship", "truck"]}, fh)


def make_svhn(root: Path, seed: int = 0) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x, y = _images(rng, n, (3, 32, 32))
        y_mat = np.where(y == 0, 10, y).reshape(-1, 1)  # SVHN stores the digit 0 as label 10
        savemat(str(root / f"{split}_32x32.mat"), {"X": np.transpose(x, (2, 3, 1, 0)), "y": y_mat})


#: a user's dataset module for the `module:callable` form (written to a file by the tests)
USER_MODULE = '''
import torch

class Blobs(torch.utils.data.Dataset):
    """A user's dataset: {split} inputs, labels only in the items (no .targets)."""

    def __init__(self, n, seed, scale):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 4, (n,), generator=g)
        self.x = torch.randn(n, 1, 8, 8, generator=g) + self.y.view(-1, 1, 1, 1).float() * scale

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def make(train=True, root=None):
    # the callable picks its own train / test transform; root is passed on when given
    if root is not None:
        assert root.endswith("blobs-root"), root
    return Blobs(96 if train else 40, 0 if train else 1, 1.0)


def no_split():
    return Blobs(96, 0, 1.0)
'''
