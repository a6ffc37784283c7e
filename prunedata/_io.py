"""Atomic file writes: a reader never sees a half-written selection or checkpoint.

A failed write removes its temporary file and raises :class:`~prunedata.errors.OutputError` naming the
file that could not be written (not the temporary one). A process killed mid-write cannot clean up:
its temporary file (``.NAME.HOST-PID.XXXX.tmp``) is removed by the next write of the same file once no
process of that id runs on this host. :func:`check_writable` lets long jobs fail before the work.
"""
from __future__ import annotations

import contextlib
import errno as _errno
import io
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Union

from .errors import OutputError

PathLike = Union[str, "os.PathLike[str]"]

_HINTS = {
    _errno.ENOSPC: "free some space or write elsewhere",
    _errno.EDQUOT: "free some space (disk quota exceeded) or write elsewhere",
    _errno.EROFS: "the filesystem is read-only; write elsewhere",
    _errno.EACCES: "you lack write permission there; write elsewhere or fix the permissions",
    _errno.EPERM: "you lack write permission there; write elsewhere or fix the permissions",
}


def output_error(path: PathLike, e: OSError, what: str = "") -> OutputError:
    """An :class:`OutputError` naming ``path`` (and what it is) for the ``OSError`` ``e``."""
    reason = e.strerror or str(e)
    hint = _HINTS.get(e.errno or 0, "check the path or write elsewhere")
    err = OutputError(f"cannot write {what + ' ' if what else ''}{path}: {reason}; {hint}")
    err.errno, err.strerror, err.filename = e.errno, reason, str(path)
    return err


def _tmp_prefix(name: str) -> str:
    host = socket.gethostname().replace(".", "_")[:32] or "host"
    return f".{name}.{host}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def remove_stale_temporaries(path: PathLike) -> int:
    """Remove temporary files of ``path`` left by killed writers on this host; returns how many."""
    path = Path(path)
    prefix = _tmp_prefix(path.name)
    removed = 0
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return 0
    for p in entries:
        if not (p.name.startswith(prefix) and p.name.endswith(".tmp")):
            continue
        pid_part = p.name[len(prefix):].split(".", 1)[0]
        if not pid_part.isdigit() or int(pid_part) == os.getpid() or _pid_alive(int(pid_part)):
            continue
        try:
            p.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def check_writable(path: PathLike, what: str = "output") -> Path:
    """Fail now (:class:`OutputError`) when ``path`` could not be written later: its folder cannot be
    made, or a file cannot be created in it. Nothing is left behind."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"cannot write {what} {path}: it is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path.name) + f"{os.getpid()}.", suffix=".tmp", dir=path.parent)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        raise output_error(path, e, what) from None
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path.name) + f"{os.getpid()}.", suffix=".tmp",
                                   dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise output_error(path, e) from e
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` that never leaves a truncated checkpoint behind."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())
