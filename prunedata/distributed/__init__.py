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

Modules: :mod:`.collectives`, :mod:`.joint` (DDP joint training), :mod:`.scoring`.
"""
from __future__ import annotations

from .collectives import DEFAULT_TIMEOUT, DistributedError, all_gather_object, all_reduce, barrier, broadcast_object, cleanup, collective_guard, gather_per_sample, gather_rows, get_rank, get_world_size, init_distributed, is_distributed, is_main_process, run_on_main, save_selection, shard_indices  # noqa: F401
from .joint import DistributedAdaPruner, train_adapruner_ddp
from .scoring import distributed_el2n, distributed_grand, distributed_influence, distributed_scores

__all__ = ['DistributedError', 'init_distributed', 'cleanup', 'is_distributed', 'get_rank', 'get_world_size', 'is_main_process', 'collective_guard', 'barrier', 'broadcast_object', 'all_gather_object', 'all_reduce', 'run_on_main', 'save_selection', 'shard_indices', 'gather_rows', 'gather_per_sample', 'DistributedAdaPruner', 'train_adapruner_ddp', 'distributed_scores', 'distributed_el2n', 'distributed_grand', 'distributed_influence']

