"""Scale-out with ``torch.distributed`` (torchrun + DDP): AdaPruner and per-sample scores across ranks.

Launch with ``torchrun --nproc_per_node=K script.py``; inside the script::

    from prunedata import AdaPruner
    from prunedata.distributed import init_distributed, save_selection, train_adapruner_ddp
    init_distributed(timeout=300)            # reads RANK/WORLD_SIZE/MASTER_ADDR set by torchrun
    pruner = AdaPruner(len(ds), keep_ratio=0.7, epochs=10, process_group="world")   # one mask, all ranks
    sampler = train_adapruner_ddp(model, ds, pruner, batch_size=128, checkpoint="run.pt", resume=True)
    save_selection(sampler.pruner.selection(ds), "selection.json")   # rank 0 writes, every rank can read

Every rank holds the whole mask; :class:`AdaPrunerSampler` gives each rank its shard of the epoch's
permutation, so per-rank batch ``B`` on ``K`` ranks covers the samples of a ``K*B`` batch in one
process. DDP averages the model gradient, the pruner sums the mask gradient before each mask step, and
at every epoch end the ranks' masks are checked against rank 0's. Rank 0 writes checkpoints (with
every rank's RNG state) and selections atomically; the others wait for it and learn if it failed.
What is kept consistent, and how: ``docs/distributed.md``.

Failures. Every collective runs under the process group's timeout (``init_distributed(timeout=...)``).
A rank that dies or hangs makes the others' next collective fail (at once, or after the timeout) with
a :class:`DistributedError` that says which rank, what was being done, and how to resume.

Scores. :func:`distributed_scores` computes per-sample scores on each rank's shard and gathers them
once (:func:`distributed_el2n`, :func:`distributed_grand` for the baselines);
:func:`distributed_influence` does the same for influence scoring, with the Hessian summed across ranks.

Modules: :mod:`.collectives`, :mod:`.joint` (DDP joint training), :mod:`.scoring`.
"""
from __future__ import annotations

from .collectives import DEFAULT_TIMEOUT, DistributedError, all_gather_object, all_reduce, barrier, broadcast_object, cleanup, collective_guard, gather_per_sample, gather_rows, get_rank, get_world_size, init_distributed, is_distributed, is_main_process, run_on_main, save_selection, shard_indices  # noqa: F401
from .joint import DistributedAdaPruner, train_adapruner_ddp
from .scoring import distributed_el2n, distributed_grand, distributed_influence, distributed_scores

__all__ = ['DistributedError', 'init_distributed', 'cleanup', 'is_distributed', 'get_rank', 'get_world_size', 'is_main_process', 'collective_guard', 'barrier', 'broadcast_object', 'all_gather_object', 'all_reduce', 'run_on_main', 'save_selection', 'shard_indices', 'gather_rows', 'gather_per_sample', 'DistributedAdaPruner', 'train_adapruner_ddp', 'distributed_scores', 'distributed_el2n', 'distributed_grand', 'distributed_influence']

