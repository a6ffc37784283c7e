"""Scale-out with ``torch.distributed`` (torchrun + DDP): AdaPruner and per-sample scores across ranks.

Launch with ``torchrun --nproc_per_node=K script.py``; inside the script::

    from prunedata import AdaPruner
    from prunedata.distributed import init_distributed, save_selection, train_adapruner_ddp
    init_distributed(timeout=300)            # reads RANK/WORLD_SIZE/MASTER_ADDR set by torchrun
    pruner = AdaPruner(len(ds), keep_ratio=0.7, epochs=10, process_group="world")   # one mask, all ranks
    sampler = train_adapruner_ddp(model, ds, pruner, batch_size=128, checkpoint="run.pt", resume=True)
    save_selection(sampler.pruner.selection(ds), "selection.json")   # rank 0 writes, every rank can read

How the answer stays the same as in one process
-----------------------------------------------
* Every rank holds the whole mask (one float per sample). :class:`AdaPrunerSampler` hands each rank
  its shard of the epoch's permutation (positions ``rank, rank+K, ...``), so per-rank batch ``B``
  on ``K`` ranks covers exactly the samples of a ``K*B`` batch in one process.
* The model is wrapped in DDP (gradients averaged = the mean over the global batch).
* The pruner (``process_group="world"``) all-reduces (sums) the mask gradient before each mask step, so all
  masks take the same step. The compression term depends on the mean of the *whole* mask, which
  every rank computes identically; its gradient is scaled by ``1/K`` on each rank so that the sum
  counts it once. The binarised ratio ``r`` (and so ``lambda``) is identical on every rank.
* At the end of an epoch the ranks sum their loss statistics, OR their "seen" flags, and check that
  their masks agree with rank 0's (an error if they drifted apart, which means the ranks did not run
  the same steps; float noise is removed by copying rank 0's mask).
* Rank 0 writes checkpoints and selections atomically; the others wait for it (and learn if it
  failed). Per-rank RNG states go into the checkpoint, so a resumed run continues exactly.

Failures. Every collective runs under the process group's timeout (``init_distributed(timeout=...)``).
A rank that dies makes the others' next collective fail at once (gloo sees the closed connection); a
rank that hangs makes them fail after the timeout. Either way the survivors raise
:class:`DistributedError`, which says which rank, what was being done, and how to resume.

Scores. :func:`distributed_scores` computes per-sample scores on each rank's shard and gathers them
once (:func:`distributed_el2n`, :func:`distributed_grand` for the baselines);
:func:`distributed_influence` does the same for influence scoring, with the Hessian summed across ranks.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Subset

from ._io import PathLike
from .adapruner import AdaPruner, AdaPrunerSampler
from .checkpoint import adapruner_recipe, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .loop import Checkpointer
from .errors import PruneDataError
from .selection import Selection
from .training import JointTraining, per_sample_ce

logger = logging.getLogger(__name__)

__all__ = [
    "DistributedError", "init_distributed", "cleanup", "is_distributed", "get_rank", "get_world_size",
    "is_main_process", "collective_guard", "barrier", "broadcast_object", "all_gather_object",
    "all_reduce", "run_on_main", "save_selection", "shard_indices", "gather_rows", "gather_per_sample",
    "DistributedAdaPruner", "train_adapruner_ddp", "distributed_scores", "distributed_el2n",
    "distributed_grand", "distributed_influence",
]

#: default process-group timeout (seconds); ``PRUNEDATA_DIST_TIMEOUT`` overrides it
DEFAULT_TIMEOUT = 600.0

_state: Dict[str, Any] = {"timeout": None}


class DistributedError(PruneDataError, RuntimeError):
    """A collective operation failed: another rank crashed, was killed, or stopped responding."""


# --------------------------------------------------------------------------- process group
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
    if v is None or v == "":
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
        raise PruneDataError(
            f"RANK={rank} and WORLD_SIZE={world_size}: both must be set (torchrun sets them). Launch "
            "with `torchrun --nproc_per_node=N script.py`, or unset both to run in one process."
        )
    if world_size < 1 or not 0 <= rank < world_size:
        raise PruneDataError(f"RANK must be in [0, WORLD_SIZE); got RANK={rank}, WORLD_SIZE={world_size}")
    if world_size == 1 and init_method is None:
        return False
    init_method = init_method or "env://"
    if init_method == "env://":
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise PruneDataError(
                f"{' and '.join(missing)} not set: the env:// rendezvous needs the address and port of "
                "rank 0 (torchrun sets them; with a hand-made launch export MASTER_ADDR=127.0.0.1 "
                "MASTER_PORT=<free port>)"
            )
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
        msg = (
            f"rank {get_rank()} of {get_world_size()}: {what} failed after {waited:.1f}s: another rank "
            f"crashed, was killed, or did not respond within the timeout ({_timeout_seconds():g}s). "
            f"Check the other ranks' logs. Cause: {first}"
        )
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
            err = e
            status = (f"{type(e).__name__}: {e}", None)
    status = broadcast_object(status, src=0, what=f"waiting for rank 0 to {what}")
    if err is not None:
        raise err
    if status[0] is not None:
        raise DistributedError(f"rank 0 failed to {what}: {status[0]}")
    return status[1]


def save_selection(selection: Selection, path: PathLike) -> Path:
    """Rank 0 writes ``selection`` atomically; every rank returns once the file is complete."""
    return Path(run_on_main(selection.save, path, what=f"write the selection {path}"))


# --------------------------------------------------------------------------- sharding / gathering
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
        raise PruneDataError(
            f"got {tuple(val.shape)} values for {idx.shape[0]} indices on rank {get_rank()}: {what} needs one "
            "row per index"
        )
    tail = tuple(val.shape[1:])
    world = get_world_size()
    if world > 1:
        counts = torch.zeros(world, dtype=torch.long)
        counts[get_rank()] = idx.numel()
        all_reduce(counts, what=f"{what} (sizes)")
        m = int(counts.max())
        pad_i = torch.full((m,), -1, dtype=torch.long)
        pad_i[: idx.numel()] = idx
        pad_v = torch.zeros((m,) + tail, dtype=val.dtype)
        pad_v[: idx.numel()] = val
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
        raise PruneDataError(
            f"{what}: {miss.numel()} samples were computed on no rank (e.g. {miss[:5].tolist()}); every rank "
            "must process its shard (shard_indices(n)) of the same dataset"
        )
    out = torch.empty((num_samples,) + tail, dtype=val.dtype)
    out[idx] = val
    return out


def gather_per_sample(indices: Any, values: Any, num_samples: int, what: str = "gather per-sample values") -> np.ndarray:
    """:func:`gather_rows` for per-sample scores: a float64 array of length ``num_samples`` on every rank."""
    vals = torch.as_tensor(np.asarray(values, dtype=np.float64))
    return gather_rows(indices, vals, num_samples, what=what).numpy()


# --------------------------------------------------------------------------- AdaPruner
class DistributedAdaPruner(AdaPruner):
    """Deprecated name of ``AdaPruner(..., process_group=...)``: one mask shared by the ranks.

    ``process_group`` defaults to every rank of the default group (``"world"``). Kept for one
    release; constructing one emits a ``DeprecationWarning``.
    """

    def __init__(self, num_samples: int, keep_ratio: float, *, process_group: Any = None,
                 sync_tolerance: float = 1e-3, **kw: Any):
        warnings.warn("DistributedAdaPruner is deprecated and will be removed in the next release; use "
                      "AdaPruner(..., process_group='world') (the one mask object)", DeprecationWarning, stacklevel=2)
        super().__init__(num_samples, keep_ratio, process_group="world" if process_group is None else process_group,
                         sync_tolerance=sync_tolerance, **kw)

    @classmethod
    def from_pruner(cls, pruner: AdaPruner, **kw: Any) -> "DistributedAdaPruner":
        """A distributed copy of an existing :class:`AdaPruner` (same parameters and state)."""
        if isinstance(pruner, DistributedAdaPruner) and not kw:
            return pruner
        new = cls(pruner.num_samples, device=pruner.mask.device, **pruner.params(), **kw)
        new.load_state_dict(pruner.state_dict())
        return new


# --------------------------------------------------------------------------- DDP training loop
def _resume_hint(checkpoint: Optional[PathLike]) -> str:
    if checkpoint is None:
        return "Pass checkpoint=... to train_adapruner_ddp to be able to resume after a failure"
    if Path(checkpoint).exists():
        return f"Restart all ranks with resume=True (--resume) to continue from the last checkpoint {checkpoint}"
    return f"No checkpoint was written yet ({checkpoint}); restart all ranks to begin again"


def train_adapruner_ddp(model: torch.nn.Module, dataset: Any, pruner: AdaPruner, *,
                        optimizer: Optional[torch.optim.Optimizer] = None, batch_size: int = 256,
                        lr: float = 0.05, num_workers: int = 0, seed: int = 0, device: Any = None,
                        loss_fn: Callable = per_sample_ce, checkpoint: Optional[PathLike] = None,
                        resume: bool = False, stop_after_epoch: Optional[int] = None,
                        show_progress: bool = True, on_step: Optional[Callable[[int, int], None]] = None,
                        ddp_kwargs: Optional[Dict[str, Any]] = None) -> AdaPrunerSampler:
    """Joint training of ``model`` and ``pruner``'s mask with DDP across the ranks of the process group.

    Call on every rank with the same arguments (after :func:`init_distributed`). ``batch_size`` is per
    rank: ``K`` ranks with ``batch_size=B`` take the same optimisation steps as one process with
    ``batch_size=K*B`` (:func:`prunedata.training.train_adapruner`) when ``len(dataset)`` is a multiple
    of ``K`` (otherwise the sampler pads the last shard with repeated samples). ``pruner`` must be a
    :class:`DistributedAdaPruner` when there is more than one rank.

    ``checkpoint``: rank 0 writes the whole state (model, optimiser, mask, epoch, every rank's RNG)
    atomically after each epoch; ``resume=True`` makes every rank continue from it (the file must be
    on a filesystem all ranks see). ``on_step(epoch, step)`` is called before each step (logging,
    fault injection in tests). Returns the sampler; ``sampler.pruner.selection(dataset)`` is identical on
    every rank; write it with :func:`save_selection`.

    Without a process group this is an ordinary single-process loop.
    """
    world, rank = get_world_size(), get_rank()
    if world > 1 and pruner.world_size <= 1:
        raise PruneDataError(
            f"this AdaPruner keeps a separate mask on each of the {world} ranks, which would drift apart. Build it "
            "with AdaPruner(..., process_group='world') so the ranks share one mask (DistributedAdaPruner, its "
            "deprecated name, does the same)"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PruneDataError(f"batch_size (per rank) must be a positive int, got {batch_size!r}")
    if len(dataset) != pruner.num_samples:
        raise PruneDataError(
            f"the pruner has {pruner.num_samples} mask entries but the dataset has {len(dataset)} samples"
        )
    if device is None:
        device = f"cuda:{torch.cuda.current_device()}" if (is_distributed() and dist.get_backend() == "nccl") else "cpu"
    device = torch.device(device)
    if world > 1 and len(dataset) % world:
        logger.warning("%d samples do not split evenly over %d ranks: the sampler repeats %d samples per epoch",
                       len(dataset), world, world - len(dataset) % world)
    from .loop import Recipe, train

    recipe = Recipe(epochs=pruner.epochs, batch_size=batch_size, lr=lr, seed=seed, device=str(device),
                    schedule="constant")
    model.to(device)
    optimizer = optimizer if optimizer is not None else recipe.optimizer(model.parameters())
    sampler = AdaPrunerSampler(pruner, seed=seed, num_replicas=world, rank=rank)
    key = adapruner_recipe(model, len(dataset), pruner, optimizer, batch_size=batch_size, seed=seed)
    ckpt = _DDPCheckpointer(checkpoint, key, sampler, model, world) if checkpoint is not None else None
    if resume and ckpt is not None and not ckpt.exists():
        logger.info("no checkpoint at %s yet: starting from epoch 0", checkpoint)
    net: torch.nn.Module = model
    if world > 1:
        with collective_guard("wrapping the model in DistributedDataParallel"):
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, **(ddp_kwargs or {}))
    train(net, dataset, recipe, hooks=[_DDPJointTraining(sampler, loss_fn, checkpoint, on_step)], with_ids=True,
          num_workers=num_workers, optimizer=optimizer, sampler=sampler, checkpointer=ckpt, resume=resume,
          stop_after_epoch=stop_after_epoch, show_progress=show_progress and rank == 0, desc="adapruner", log=logger)
    return sampler


class _DDPJointTraining(JointTraining):
    """Joint training under DDP: each step and the end of each epoch run under a collective guard
    (a dead rank fails the others with a hint how to resume); ``on_step(epoch, step)`` before each step."""

    def __init__(self, sampler: AdaPrunerSampler, loss_fn: Callable, checkpoint: Optional[PathLike],
                 on_step: Optional[Callable[[int, int], None]]):
        super().__init__(sampler, loss_fn)
        self.checkpoint, self.on_step = checkpoint, on_step

    def around_step(self, epoch: int, index: int) -> Any:
        if self.on_step is not None:
            self.on_step(epoch, index - 1)
        return collective_guard(f"epoch {epoch}, step {index - 1} (forward/backward with the DDP gradient "
                                "all-reduce, mask update)",
                                _resume_hint(self.checkpoint))

    def after_epoch(self, epoch: int, model: torch.nn.Module) -> None:
        with collective_guard(f"end of epoch {epoch - 1}", _resume_hint(self.checkpoint)):
            super().after_epoch(epoch, model)


class _DDPCheckpointer(Checkpointer):
    """Rank 0 writes model, optimiser, mask, epoch and every rank's RNG state; every rank resumes from it."""

    def __init__(self, path: PathLike, recipe: Dict[str, Any], sampler: AdaPrunerSampler, model: torch.nn.Module,
                 world: int):
        super().__init__(path, recipe, "AdaPruner run")
        self.sampler, self.model, self.world = sampler, model, world

    def exists(self) -> bool:
        here = Path(self.path).exists()
        found = all_gather_object(here, what="checking the checkpoint on every rank")
        if any(found) and not all(found):
            raise DistributedError(
                f"checkpoint {self.path} exists on ranks {[i for i, f in enumerate(found) if f]} but not on "
                f"{[i for i, f in enumerate(found) if not f]}: put it on a filesystem that every rank sees"
            )
        return here

    def save(self, epoch, model, optimizer, scheduler, generator, hook_state) -> None:
        rngs = all_gather_object(rng_state(), what=f"gathering RNG states for the checkpoint of epoch {epoch - 1}")
        run_on_main(save_checkpoint, self.path, model=self.model, optimizer=optimizer, sampler=self.sampler,
                    epoch=epoch, extra={"world_size": self.world, "rng_per_rank": rngs, "recipe": self.recipe},
                    what=f"write the checkpoint {self.path}")

    def load(self, model, optimizer, scheduler, generator) -> tuple:
        return _load_ddp_checkpoint(self.path, self.model, optimizer, self.sampler, self.recipe), None


def _load_ddp_checkpoint(path: PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         sampler: AdaPrunerSampler, recipe: Optional[Dict[str, Any]] = None) -> int:
    start = load_checkpoint(path, model=model, optimizer=optimizer, sampler=sampler, recipe=recipe,
                            what="AdaPruner run")
    extra = torch.load(path, map_location="cpu", weights_only=False).get("extra") or {}
    world, rank = get_world_size(), get_rank()
    rngs = extra.get("rng_per_rank")
    if rngs and len(rngs) == world:
        set_rng_state(rngs[rank])
    elif world > 1 or extra.get("world_size", 1) != world:
        logger.warning("checkpoint %s was written by %s ranks, now %d: RNG streams restart from rank 0's",
                       path, extra.get("world_size", "?"), world)
    starts = all_gather_object(start, what="checking that every rank resumed at the same epoch")
    if len(set(starts)) != 1:
        raise DistributedError(
            f"ranks resumed from different epochs {starts}: the checkpoint {path} changed while being read; "
            "restart all ranks"
        )
    logger.info("rank %d resumed from %s at epoch %d", rank, path, start)
    return start


# --------------------------------------------------------------------------- scores
def _agree(fn: Callable[[], Any], what: str) -> Any:
    """Run ``fn`` on every rank; if it raises on any rank, raise on every rank (no one waits for it)."""
    err: Optional[BaseException] = None
    out = None
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - re-raised below after telling the others
        err = e
    status = all_gather_object(None if err is None else f"{type(err).__name__}: {err}", what=f"{what} (status)")
    if err is not None:
        raise err
    bad = [(r, m) for r, m in enumerate(status) if m]
    if bad:
        raise DistributedError(f"{what} failed on rank {bad[0][0]}: {bad[0][1]}")
    return out


def _check_shardable(n: int) -> None:
    if n < get_world_size():
        raise PruneDataError(f"the dataset has {n} samples, fewer than the {get_world_size()} ranks: every rank needs "
                             "at least one sample; use fewer processes")


def distributed_scores(score_fn: Callable[[Any], Any], dataset: Any, *, what: str = "per-sample scores") -> np.ndarray:
    """Per-sample scores of the whole ``dataset``, computed shard by shard across ranks.

    ``score_fn(subset)`` must return one score per sample of the map-style ``subset`` it is given,
    in order; each rank calls it on its contiguous shard (:func:`shard_indices`) and the results are
    all-gathered once. Every rank returns the full float64 array in dataset order. Without a process
    group this is ``score_fn(dataset)``. E.g. EL2N of a trained model::

        scores = distributed_scores(lambda part: el2n_scores(model, part), dataset)
    """
    n = len(dataset)
    _check_shardable(n)
    idx = shard_indices(n)
    part = dataset if get_world_size() == 1 else Subset(dataset, idx.tolist())

    def local() -> np.ndarray:
        vals = np.asarray(score_fn(part), dtype=np.float64)
        if vals.shape != (len(idx),):
            raise PruneDataError(
                f"score_fn returned shape {vals.shape} for a shard of {len(idx)} samples; it must return one "
                "score per sample of the dataset it is given, in order"
            )
        return vals

    vals = _agree(local, what)
    return gather_per_sample(idx, vals, n, what=f"gathering {what}")


def distributed_el2n(model: torch.nn.Module, dataset: Any, **kw: Any) -> np.ndarray:
    """EL2N scores (:func:`prunedata.methods.scoring.el2n_scores`) of ``model``, sharded across ranks."""
    from .methods.scoring import el2n_scores

    return distributed_scores(lambda part: el2n_scores(model, part, **kw), dataset, what="EL2N scores")


def distributed_grand(model: torch.nn.Module, dataset: Any, **kw: Any) -> np.ndarray:
    """GraNd scores (:func:`prunedata.methods.scoring.grand_scores`) of ``model``, sharded across ranks."""
    from .methods.scoring import grand_scores

    return distributed_scores(lambda part: grand_scores(model, part, **kw), dataset, what="GraNd scores")


def distributed_influence(model: torch.nn.Module, dataset: Any, *, layer: Any = None, damping: float = 5e-4,
                          solver: str = "auto", batch_size: int = 512, device: Any = None,
                          dtype: torch.dtype = torch.float64, out_dtype: torch.dtype = torch.float32,
                          gather: bool = True, show_progress: bool = True):
    """:func:`prunedata.methods.influence.compute_influence` with the work split across ranks.

    Each rank collects the head features of its shard (:func:`shard_indices`) and accumulates its
    part of the Hessian (or of the K-FAC factors); the sums are all-reduced, so every rank solves
    with the Hessian of the whole dataset; each rank then computes its rows of ``S`` (with the
    ``1/n`` of the whole dataset). With ``gather=True`` (default) ``S``, the features and labels are
    all-gathered once and every rank returns the same :class:`InfluenceResult` as one process would
    (rows in dataset order); with ``gather=False`` each rank returns its shard's rows
    (``result.features.indices`` says which). Call on every rank with the same model.
    """
    from .methods.influence import Features, compute_influence

    n = len(dataset)
    _check_shardable(n)
    idx = shard_indices(n)
    res = compute_influence(model, dataset, layer=layer, damping=damping, solver=solver, batch_size=batch_size,
                            device=device, dtype=dtype, out_dtype=out_dtype, show_progress=show_progress and is_main_process(),
                            indices=idx, reduce=lambda t, what: all_reduce(t, what=what), agree=_agree)
    if gather:
        t0 = time.perf_counter()
        dev = res.features.h.device
        res.S = gather_rows(idx, res.S, n, what="gathering the influence rows S").to(dev)
        h = gather_rows(idx, res.features.h, n, what="gathering the head features").to(dev)
        y = gather_rows(idx, res.features.y, n, what="gathering the labels").to(dev)
        res.features = Features(h, y, np.arange(n, dtype=np.int64))
        res.timings["gather"] = time.perf_counter() - t0
    logger.info("distributed influence: rank %d of %d scored %d of %d samples, d=%d, %s Hessian", get_rank(),
                get_world_size(), len(idx), n, res.dim, res.solver_name)
    return res
