"""Detectron2 availability check with an error that says how to install it."""
from __future__ import annotations

INSTALL_HINT = (
    "prunedata.adapters.detectron2 needs Detectron2 (>=0.6), which is not on PyPI under its own name. "
    "Install it with the project's script `scripts/install_detectron2.sh` (run it with the python of "
    "this environment; it installs Detectron2 v0.6's Python sources plus pinned dependencies), or "
    "build it from https://github.com/facebookresearch/detectron2 "
    "(pip install 'git+https://github.com/facebookresearch/detectron2.git').")


def require_detectron2():
    """Import and return the ``detectron2`` package, or raise an ImportError naming the install script."""
    try:
        import detectron2  # noqa: F401
        from detectron2.data import DatasetCatalog  # noqa: F401  (fails on a broken install)
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} (import failed: {e})") from e
    return detectron2
