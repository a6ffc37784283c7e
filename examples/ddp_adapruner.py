"""AdaPruner on several processes with torchrun + DDP (CPU/gloo or GPU/nccl).

    torchrun --nproc_per_node=2 examples/ddp_adapruner.py --max-samples 4000 --keep-ratio 0.7 \
        --epochs 6 --batch-size 64 --out runs/ddp/selection.json --checkpoint runs/ddp/ckpt.pt

``--batch-size`` is per rank (the global batch is nproc * batch-size). After a crash, run the same
command with ``--resume``. Without torchrun (``python examples/ddp_adapruner.py ...``) it runs in one
process. See docs/distributed.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import torch

from prunedata import AdaPruner, Selection
from prunedata.datasets import FashionMNIST
from prunedata.distributed import (DistributedError, cleanup, get_rank, get_world_size,
                                   init_distributed, save_selection, train_adapruner_ddp)
from prunedata.errors import PruneDataError
from prunedata.models import make_model
from prunedata.training import seed_everything


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-samples", type=int, default=4000, help="Fashion-MNIST training samples to use")
    p.add_argument("--keep-ratio", type=float, default=0.7)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--model", default="mlp", help="cnn, cnn_bn (BatchNorm: stats stay per rank), mlp, linear")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="selection.json", help="selection file (written by rank 0)")
    p.add_argument("--checkpoint", default=None, help="checkpoint written by rank 0 after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds a rank waits for its peers before failing with a clear error")
    p.add_argument("--init-method", default=None,
                   help="rendezvous URL (default env://, as set by torchrun; file:///path works too)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--simulate-failure", default=None, metavar="EPOCH:STEP",
                   help="demo: the last rank kills itself (SIGKILL) at this step of its first attempt, so you can "
                        "watch the others fail and the run resume (with torchrun --max-restarts=1 and --resume)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    init_distributed(init_method=args.init_method, timeout=args.timeout)
    rank, world = get_rank(), get_world_size()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    try:
        dataset = FashionMNIST(train=True, max_samples=args.max_samples)
        seed_everything(args.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
        model = make_model(args.model)
        pruner = AdaPruner(len(dataset), args.keep_ratio, process_group="world", epochs=args.epochs,
                                      warmup_epochs=args.warmup_epochs)
        on_step = None
        if args.simulate_failure and rank == world - 1 and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
            when = tuple(int(v) for v in args.simulate_failure.split(":"))

            def on_step(epoch, step):
                if (epoch, step) == when:
                    os.kill(os.getpid(), signal.SIGKILL)

        sampler = train_adapruner_ddp(model, dataset, pruner, batch_size=args.batch_size, lr=args.lr,
                                      seed=args.seed, checkpoint=args.checkpoint, resume=args.resume,
                                      show_progress=rank == 0, on_step=on_step)
        sel = sampler.pruner.selection(dataset, extra_params={"world_size": world, "batch_size_per_rank": args.batch_size,
                                                        "model": args.model, "seed": args.seed})
        path = save_selection(sel, args.out)
        mine = Selection.load(path, dataset)  # every rank can read the file once save_selection returns
        if rank == 0:
            print(f"{world} rank(s): kept {mine.num_kept} of {mine.dataset_size} ({mine.keep_ratio:.4f}) -> {path}")
        return 0
    except DistributedError as e:
        print(f"[rank {rank}] error: {e}", file=sys.stderr, flush=True)
        os._exit(3)  # the process group is broken: do not wait in its shutdown
    except PruneDataError as e:
        print(f"[rank {rank}] error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
