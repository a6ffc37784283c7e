"""Collectives with failures made clear: process-group set-up, rank queries, guarded all-reduce /
broadcast / all-gather (a dead or hung rank becomes a DistributedError naming what was being done),
writes on rank 0, and sharding and gathering of per-sample rows."""
from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from .._io import PathLike
from ..errors import PruneDataError
from ..selection import Selection

logger = logging.getLogger(__name__)


#: default process-group timeout (seconds); ``PRUNEDATA_DIST_TIMEOUT`` overrides it
DEFAULT_TIMEOUT = 600.0


_state: Dict[str, Any] = {"timeout": None}


class DistributedError(PruneDataError, RuntimeError):
    """A collective operation failed: another rank crashed, was killed, or stopped responding."""


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank(group: Any = None) -> int:
    return dist.get_rank(group) if is_distributed() else 0


def get_world_size(group: Any = None) -> int:
    return dist.get_world_size(group) if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def _timeout_seconds() -> float:
    if _state["timeout"] is not None:
        return float(_state["timeout"])
    return float(os.environ.get("PRUNEDATA_DIST_TIMEOUT", DEFAULT_TIMEOUT))


def _env_int(name: str) -> Optional[int]:
    v = os.environ.get(name)
    if not v:
        return None
    try:
        return int(v)
    except ValueError:
        raise PruneDataError(f"environment variable {name}={v!r} must be an integer") from None


def init_distributed(backend: Optional[str] = None, *, init_method: Optional[str] = None,
                     timeout: Optional[float] = None, rank: Optional[int] = None,
                     world_size: Optional[int] = None) -> bool:
    """Join the process group that torchrun (or another launcher) describes; returns ``True`` if joined.

    Reads ``RANK``, ``WORLD_SIZE`` (and, for the default ``env://`` rendezvous, ``MASTER_ADDR``,
    ``MASTER_PORT``) from the environment, as set by ``torchrun``. Without them (a plain ``python
    script.py``) nothing is initialised and ``False`` is returned, so the same script runs in one
    process. ``backend`` defaults to ``"nccl"`` when CUDA is available, else ``"gloo"``.
    ``timeout`` (seconds; default ``PRUNEDATA_DIST_TIMEOUT`` or 600) bounds every collective: a rank
    that waits longer for its peers raises :class:`DistributedError` instead of hanging.
    ``init_method="file:///shared/path"`` rendezvous through a file instead of a TCP port.
    """
    if timeout is not None:
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise PruneDataError(f"timeout must be a positive number of seconds, got {timeout!r}")
        _state["timeout"] = float(timeout)
    if is_distributed():
        return True
    rank = _env_int("RANK") if rank is None else int(rank)
    world_size = _env_int("WORLD_SIZE") if world_size is None else int(world_size)
    if world_size is None and rank is None:
        return False
    if world_size is None or rank is None:
        raise PruneDataError(f"RANK={rank} and WORLD_SIZE={world_size}: both must be set (torchrun sets them). Launch "
                             "with `torchrun --nproc_per_node=N script.py`, or unset both to run in one process.")
    if world_size < 1 or not 0 <= rank < world_size:
        raise PruneDataError(f"RANK must be in [0, WORLD_SIZE); got RANK={rank}, WORLD_SIZE={world_size}")
    if world_size == 1 and init_method is None:
        return False
    init_method = init_method or "env://"
    if init_method == "env://":
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise PruneDataError(f"{' and '.join(missing)} not set: the env:// rendezvous needs the address and port "
                                 "of rank 0 (torchrun sets them; with a hand-made launch export MASTER_ADDR=127.0.0.1 "
                                 "MASTER_PORT=<free port>)")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        local = _env_int("LOCAL_RANK")
        torch.cuda.set_device(local if local is not None else rank % max(1, torch.cuda.device_count()))
    secs = _timeout_seconds()
    td = datetime.timedelta(seconds=secs)
    restart = _env_int("TORCHELASTIC_RESTART_COUNT") or 0
    if restart > 0 and init_method == "env://":
        # torchrun --max-restarts reuses its agent's store: without a fresh key prefix per restart the
        # new workers read the dead workers' gloo addresses and fail to connect (seen with torch 2.14)
        store, rank, world_size = next(dist.rendezvous(init_method, rank, world_size, timeout=td))
        store.set_timeout(td)
        store = dist.PrefixStore(f"prunedata_restart_{restart}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=td)
    else:
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size, timeout=td)
    logger.info("joined process group: rank %d of %d, backend %s, timeout %.0fs", rank, world_size, backend, secs)
    return True


def cleanup() -> None:
    """Leave the process group (no-op when there is none)."""
    if is_distributed():
        dist.destroy_process_group()


def _is_comm_error(e: BaseException) -> bool:
    if isinstance(e, dist.DistError):
        return True
    if not isinstance(e, RuntimeError):
        return False
    s = str(e).lower()
    return any(m in s for m in ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket",
                                "broken pipe", "monitoredbarrier", "process group", "processgroup"))


@contextlib.contextmanager
def collective_guard(what: str, hint: Optional[str] = None) -> Iterator[None]:
    """Turn a failed/timed-out collective inside the block into a clear :class:`DistributedError`."""
    t0 = time.monotonic()
    try:
        yield
    except DistributedError:
        raise
    except Exception as e:  # noqa: BLE001 - filtered by _is_comm_error
        if not (is_distributed() and _is_comm_error(e)):
            raise
        waited = time.monotonic() - t0
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = (f"rank {get_rank()} of {get_world_size()}: {what} failed after {waited:.1f}s: another rank crashed, was "
               f"killed, or did not respond within the timeout ({_timeout_seconds():g}s). Check the other ranks' logs. "
               f"Cause: {first}")
        if hint:
            msg += f". {hint}"
        raise DistributedError(msg) from e


def barrier(what: str = "barrier", hint: Optional[str] = None) -> None:
    """Wait for every rank; on gloo a monitored barrier names the ranks that did not arrive."""
    if get_world_size() <= 1:
        return
    with collective_guard(what, hint):
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=_timeout_seconds()), wait_all_ranks=True)
        else:
            dist.barrier()


def broadcast_object(obj: Any, src: int = 0, what: str = "broadcast") -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; for small objects)."""
    if get_world_size() <= 1:
        return obj
    box = [obj]
    with collective_guard(what):
        dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any, what: str = "all_gather") -> List[Any]:
    """List of every rank's ``obj``, in rank order (pickled; for small objects)."""
    if get_world_size() <= 1:
        return [obj]
    out: List[Any] = [None] * get_world_size()
    with collective_guard(what):
        dist.all_gather_object(out, obj)
    return out


def all_reduce(tensor: torch.Tensor, op: Any = None, what: str = "all_reduce", group: Any = None) -> torch.Tensor:
    """In-place all-reduce (sum by default) of ``tensor`` across ranks; returns it."""
    if get_world_size(group) <= 1:
        return tensor
    with collective_guard(what):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op is None else op, group=group)
    return tensor


def run_on_main(fn: Callable[..., Any], *args: Any, what: str = "write a file", **kw: Any) -> Any:
    """Run ``fn`` on rank 0 only; every rank returns its result once it is done.

    Acts as a barrier. If ``fn`` raises on rank 0, it re-raises there and the other ranks raise a
    :class:`DistributedError` saying so (instead of waiting for a file that never comes).
    """
    if get_world_size() <= 1:
        return fn(*args, **kw)
    err: Optional[BaseException] = None
    status: Tuple[Optional[str], Any] = (None, None)
    if get_rank() == 0:
        try:
            status = (None, fn(*args, **kw))
        except Exception as e:  # noqa: BLE001 - re-raised below after telling the others
            err, status = e, (f"{type(e).__name__}: {e}", None)
    status = broadcast_object(status, src=0, what=f"waiting for rank 0 to {what}")
    if err is not None:
        raise err
    if status[0] is not None:
        raise DistributedError(f"rank 0 failed to {what}: {status[0]}")
    return status[1]


def save_selection(selection: Selection, path: PathLike) -> Path:
    """Rank 0 writes ``selection`` atomically; every rank returns once the file is complete."""
    return Path(run_on_main(selection.save, path, what=f"write the selection {path}"))


def shard_indices(n: int, rank: Optional[int] = None, world_size: Optional[int] = None) -> np.ndarray:
    """Contiguous block of ``range(n)`` owned by ``rank`` (blocks differ in size by at most one)."""
    rank = get_rank() if rank is None else int(rank)
    world_size = get_world_size() if world_size is None else int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise PruneDataError(f"rank must be in [0, world_size); got rank={rank}, world_size={world_size}")
    bounds = np.linspace(0, n, world_size + 1).round().astype(np.int64)
    return np.arange(bounds[rank], bounds[rank + 1], dtype=np.int64)


def gather_rows(indices: Any, rows: Any, num_samples: int, what: str = "gather per-sample rows") -> torch.Tensor:
    """Assemble per-sample ``rows`` (a tensor whose first dimension matches ``indices``) from every rank.

    Each rank passes the dataset indices it computed and their rows; every rank returns one tensor
    of shape ``(num_samples, ...)`` in dataset order (dtype kept), made with one all-gather. Every
    index must be covered by some rank (an index covered twice takes the later rank's row).
    """
    idx = torch.as_tensor(np.asarray(indices), dtype=torch.long).reshape(-1)
    val = rows.detach().cpu() if isinstance(rows, torch.Tensor) else torch.as_tensor(np.asarray(rows))
    if val.dim() == 0 or val.shape[0] != idx.shape[0]:
        raise PruneDataError(f"got {tuple(val.shape)} values for {idx.shape[0]} indices on rank {get_rank()}: {what} "
                             "needs one row per index")
    tail = tuple(val.shape[1:])
    world = get_world_size()
    if world > 1:
        counts = torch.zeros(world, dtype=torch.long)
        counts[get_rank()] = idx.numel()
        all_reduce(counts, what=f"{what} (sizes)")
        pad = int(counts.max()) - idx.numel()  # all_gather needs equal sizes
        pad_i = torch.cat([idx, idx.new_full((pad,), -1)])
        pad_v = torch.cat([val, val.new_zeros((pad,) + tail)])
        gi = [torch.empty_like(pad_i) for _ in range(world)]
        gv = [torch.empty_like(pad_v) for _ in range(world)]
        with collective_guard(what):
            dist.all_gather(gi, pad_i)
            dist.all_gather(gv, pad_v)
        idx = torch.cat([g[: int(c)] for g, c in zip(gi, counts)])
        val = torch.cat([g[: int(c)] for g, c in zip(gv, counts)])
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_samples):
        raise PruneDataError(f"{what}: a per-sample index lies outside [0, {num_samples})")
    covered = torch.zeros(num_samples, dtype=torch.bool)
    covered[idx] = True
    if not bool(covered.all()):
        miss = (~covered).nonzero().flatten()
        raise PruneDataError(f"{what}: {miss.numel()} samples were computed on no rank (e.g. {miss[:5].tolist()}); "
                             "every rank must process its shard (shard_indices(n)) of the same dataset")
    out = torch.empty((num_samples,) + tail, dtype=val.dtype)
    out[idx] = val
    return out


def gather_per_sample(indices: Any, values: Any, num_samples: int, what: str = "gather per-sample values") -> np.ndarray:
    """:func:`gather_rows` for per-sample scores: a float64 array of length ``num_samples`` on every rank."""
    vals = torch.as_tensor(np.asarray(values, dtype=np.float64))
    return gather_rows(indices, vals, num_samples, what=what).numpy()
