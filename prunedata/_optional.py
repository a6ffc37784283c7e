"""Optional dependencies: import them where needed, and say which extra installs them when missing.

>>> spearmanr = require("scipy.stats", extra="eval", purpose="proxy-search ranking").spearmanr
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError

#: top-level module -> (pip package, extra of prunedata that installs it)
PACKAGES = {
    "cvxpy": ("cvxpy", "solvers"),
    "pyscipopt": ("pyscipopt", "solvers"),
    "highspy": ("highspy", "solvers"),
    "scipy": ("scipy", "eval"),
    "sklearn": ("scikit-learn", "eval"),
    "matplotlib": ("matplotlib", "eval"),
    "torchvision": ("torchvision", "vision"),
    "PIL": ("pillow", "vision"),
    "webdataset": ("webdataset", "webdataset"),
}


def install_hint(module: str, extra: str | None = None) -> str:
    top = module.split(".")[0]
    package, default_extra = PACKAGES.get(top, (top, None))
    extra = extra or default_extra
    if extra:
        return f"pip install 'prunedata[{extra}]' (or pip install {package})"
    return f"pip install {package}"


def require(module: str, *, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` with one line saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if getattr(e, "name", None) not in (None, top, module) and not str(getattr(e, "name", "")).startswith(top):
            raise  # the package is there but something it imports is broken: show the real error
        package = PACKAGES.get(top, (top, None))[0]
        what = f" for {purpose}" if purpose else ""
        raise MissingDependencyError(f"{package} is needed{what} but is not installed: "
                                     f"{install_hint(module, extra)}") from None
