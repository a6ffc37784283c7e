"""What the command line's subcommands share: the dataset arguments, the checks of --device and of
whole-number options, and the dataset loader (imported only when a command runs, so ``--help`` stays
quick)."""
from __future__ import annotations

import argparse

from ..errors import PruneDataError


def load_dataset(name: str, **kw):
    """:func:`prunedata.catalog.load_dataset`, imported when a command needs it (``--help`` stays quick)."""
    from ..catalog import load_dataset as load

    return load(name, **kw)


def check_device(device: str) -> None:
    """Fail before the work when ``--device`` names no usable device."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise PruneDataError(f"--device {device!r} is not a device name ({e}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise PruneDataError(f"--device {device}: no CUDA GPU is visible to PyTorch here; use --device cpu (or "
                                 "install a CUDA build of torch / check CUDA_VISIBLE_DEVICES)")
        if dev.index is not None and dev.index >= n:
            raise PruneDataError(f"--device {device}: only {n} CUDA GPU(s) are visible (cuda:0..cuda:{n - 1})")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise PruneDataError(f"--device {device}: Apple's MPS backend is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise PruneDataError(f"--device {device}: prunedata's command line trains on cpu, cuda or mps")


def _int_at_least(minimum: int, text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {v}")
    return v


def positive_int(text: str) -> int:
    return _int_at_least(1, text)


def non_negative_int(text: str) -> int:
    return _int_at_least(0, text)


DATASET_HELP = ("fashion-mnist; mnist, fashionmnist, kmnist, cifar10, cifar100 or svhn in torchvision's layout under "
                "--root; an ImageFolder directory (train/ and test/ class folders); or module:callable / "
                "file.py:callable returning a map-style dataset (called with train=True/False)")


def add_dataset_args(p: argparse.ArgumentParser, *, positional: bool = True) -> None:
    """The dataset arguments every command shares (the dataset spec, --root, --download)."""
    if positional:
        p.add_argument("dataset", help=DATASET_HELP)
    p.add_argument("--root", default=None, help="folder of a torchvision-format dataset (or passed to a callable's "
                   "`root`); a selection file remembers it")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset into --root first "
                   "(nothing is downloaded without it)")
