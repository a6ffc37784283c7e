"""Progress bars (tqdm) that stay quiet when output is not a terminal or when asked."""
from __future__ import annotations

import os
import sys
from typing import Iterable, Optional

from tqdm.auto import tqdm


def progress(it: Iterable, desc: str = "", total: Optional[int] = None, disable: Optional[bool] = None, **kw):
    disable = bool(disable) or bool(os.environ.get("PRUNEDATA_NO_PROGRESS"))
    return tqdm(it, desc=desc, total=total, disable=disable, leave=False, dynamic_ncols=True,
                mininterval=1.0, file=sys.stderr, **kw)
