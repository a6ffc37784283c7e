"""prunedata.distributed: AdaPruner and per-sample scores across 2 CPU processes (gloo).

Multi-process tests launch real processes, like torchrun does (RANK/WORLD_SIZE/LOCAL_RANK in the
environment), with a file:// rendezvous and GLOO_SOCKET_IFNAME=lo so nothing listens beyond
127.0.0.1. This file is also the worker: ``python tests/test_distributed.py adapruner ...``.
The torchrun test runs ``python -m torch.distributed.run`` inside a private network namespace
(``unshare -rn``), where only loopback exists; it is skipped where that is not permitted.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# one configuration for the 2-rank runs and the single-process reference
N, EPOCHS, WARMUP, KEEP, B_RANK, SEED, MODEL = 1024, 6, 1, 0.7, 16, 0, "mlp"
WORLD = 2


# =========================================================================== worker (subprocess side)
def _worker(argv) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["adapruner", "scores"])
    p.add_argument("--init-method", required=True)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--out", default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--die-at", default=None, help="EPOCH:STEP at which rank 1 SIGKILLs itself")
    p.add_argument("--hang-at", default=None, help="EPOCH:STEP at which rank 1 stops responding")
    p.add_argument("--n", type=int, default=N)
    p.add_argument("--model-path", default=None)
    p.add_argument("--batch-size", type=int, default=B_RANK)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from prunedata.datasets import FashionMNIST
    from prunedata.distributed import (DistributedAdaPruner, DistributedError, get_rank, init_distributed,
                                       save_selection, train_adapruner_ddp)
    from prunedata.errors import PruneDataError
    from prunedata.models import make_model
    from prunedata.training import seed_everything

    init_distributed(init_method=a.init_method, timeout=a.timeout)
    rank = get_rank()
    ds = FashionMNIST(train=True, max_samples=a.n)
    try:
        if a.mode == "scores":
            return _scores_worker(ds, a.out, a.model_path)
        seed_everything(SEED)
        model = make_model(MODEL)
        pruner = DistributedAdaPruner(len(ds), KEEP, epochs=EPOCHS, warmup_epochs=WARMUP)

        def on_step(epoch, step):
            if rank != 1:
                return
            if a.die_at and (epoch, step) == tuple(map(int, a.die_at.split(":"))):
                os.kill(os.getpid(), signal.SIGKILL)
            if a.hang_at and (epoch, step) == tuple(map(int, a.hang_at.split(":"))):
                time.sleep(600)

        sampler = train_adapruner_ddp(model, ds, pruner, batch_size=a.batch_size, seed=SEED, checkpoint=a.checkpoint,
                                      resume=a.resume, show_progress=False, on_step=on_step)
        path = save_selection(sampler.selection(ds), a.out)
        from prunedata import Selection

        Selection.load(path, ds)  # every rank can read it
        torch.save({"model": model.state_dict(), "mask": pruner.mask.detach().clone(),
                    "history": pruner.history}, f"{a.out}.rank{rank}.pt")
        return 0
    except DistributedError as e:
        print(f"[rank {rank}] DistributedError: {e}", file=sys.stderr, flush=True)
        os._exit(3)
    except PruneDataError as e:
        print(f"[rank {rank}] PruneDataError: {e}", file=sys.stderr, flush=True)
        os._exit(2)


def _scores_worker(ds, out, model_path) -> int:
    from prunedata.distributed import (DistributedError, distributed_el2n, distributed_grand, distributed_influence,
                                       distributed_scores, get_rank)
    from prunedata.models import make_model

    model = make_model(MODEL)
    model.load_state_dict(torch.load(model_path))
    res = {"el2n": distributed_el2n(model, ds), "grand": distributed_grand(model, ds)}
    for kind in ("exact", "kfac"):
        inf = distributed_influence(model, ds, solver=kind, show_progress=False)
        res[f"S_{kind}"], res[f"h_{kind}"], res[f"y_{kind}"] = inf.S, inf.features.h, inf.features.y
    # the selection problem: rank 0 solves it on the gathered S, every rank gets the answer
    from prunedata.distributed import run_on_main
    from prunedata.methods.solver import solve_pruning

    sol = run_on_main(solve_pruning, res["S_exact"], remove=len(ds) // 3, what="solve the selection problem")
    res["kept"] = sol.kept
    shard = distributed_influence(model, ds, solver="exact", gather=False, show_progress=False)
    res["shard_indices"], res["shard_S"] = shard.features.indices, shard.S

    def flaky(part):  # fails on rank 1 only: every rank must raise, none may wait forever
        if get_rank() == 1:
            raise ValueError("broken shard")
        return np.zeros(len(part))

    try:
        distributed_scores(flaky, ds)
    except (ValueError, DistributedError) as e:
        res["flaky_error"] = f"{type(e).__name__}: {e}"
    # a plain AdaPruner on 2 ranks would keep 2 different masks: refused before any step
    from prunedata import AdaPruner
    from prunedata.distributed import train_adapruner_ddp
    from prunedata.errors import PruneDataError

    try:
        train_adapruner_ddp(model, ds, AdaPruner(len(ds), 0.5, epochs=2, warmup_epochs=1), show_progress=False)
    except PruneDataError as e:
        res["plain_pruner_error"] = str(e)
    torch.save(res, f"{out}.rank{get_rank()}.pt")
    return 0


# =========================================================================== launcher (pytest side)
def _env(rank: int, world: int = WORLD):
    env = dict(os.environ)
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
               GLOO_SOCKET_IFNAME="lo", PRUNEDATA_NO_PROGRESS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _launch(args, tmp_path, world: int = WORLD, script=None):
    store = tmp_path / f"store-{uuid.uuid4().hex}"
    cmd = [sys.executable, str(script or Path(__file__))] + list(args) + ["--init-method", f"file://{store}"]
    return [subprocess.Popen(cmd, env=_env(r, world), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=ROOT) for r in range(world)]


def _wait(procs, timeout: float):
    """(returncode, stdout, stderr) per process; kills (by pid) whatever is still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    res = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        res.append((p.returncode, out, err))
    return res


def _ok(results):
    for r, (code, out, err) in enumerate(results):
        assert code == 0, f"rank {r} exited with {code}:\n{out}\n{err[-3000:]}"


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """An uninterrupted 2-rank run (selection, per-rank final state, checkpoint)."""
    d = tmp_path_factory.mktemp("ddp")
    res = _wait(_launch(["adapruner", "--out", str(d / "sel.json"), "--checkpoint", str(d / "ck.pt")], d), 120)
    _ok(res)
    return d


@pytest.fixture(scope="module")
def single_run():
    """The same training in one process with the global batch (2 x per-rank batch)."""
    from prunedata import AdaPruner
    from prunedata.datasets import FashionMNIST
    from prunedata.models import make_model
    from prunedata.training import seed_everything, train_adapruner

    ds = FashionMNIST(train=True, max_samples=N)
    seed_everything(SEED)
    model = make_model(MODEL)
    p = AdaPruner(N, KEEP, epochs=EPOCHS, warmup_epochs=WARMUP)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only add contention on a busy machine
    try:
        train_adapruner(model, ds, p, batch_size=WORLD * B_RANK, seed=SEED, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    return ds, model, p


@pytest.fixture
def one_thread():
    """Small reference computations in the test process: one thread avoids contention on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _jaccard(a, b):
    a, b = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    return len(a & b) / len(a | b)


# =========================================================================== AdaPruner across ranks
@pytest.mark.distributed
def test_two_ranks_match_single_process(ddp_run, single_run):
    from prunedata import Selection

    ds, model, pruner = single_run
    ref = pruner.selection(ds)
    sel = Selection.load(ddp_run / "sel.json", ds)
    r0 = torch.load(ddp_run / "sel.json.rank0.pt", weights_only=False)
    r1 = torch.load(ddp_run / "sel.json.rank1.pt", weights_only=False)
    # every rank ends with the very same mask and model
    assert torch.equal(r0["mask"], r1["mask"])
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k
    # ... equal to the single process up to float summation order (relative to the logits' range:
    # they are sums of per-visit steps and are not clipped, so float32 rounding grows with them)
    assert np.abs(sel.scores - ref.scores).max() <= 2e-4 * max(1.0, np.abs(ref.scores).max())
    assert np.abs(sel.scores).max() > 0.1  # the mask did move
    for k, v in model.state_dict().items():
        assert torch.allclose(r0["model"][k], v, atol=1e-5), k
    # the selection: identical here; the stated tolerance is Jaccard >= 0.98, keep ratio within 0.005
    assert _jaccard(sel.kept, ref.kept) >= 0.98
    assert abs(sel.keep_ratio - ref.keep_ratio) <= 0.005
    assert abs(sel.keep_ratio - KEEP) <= 0.02 + 1e-9
    # the epoch statistics were summed over ranks (not rank 0's half only)
    for h_ddp, h_ref in zip(r0["history"], pruner.history):
        assert h_ddp["samples"] == h_ref["samples"] == N
        assert h_ddp["mean_loss"] == pytest.approx(h_ref["mean_loss"], rel=1e-4)
        assert h_ddp["keep_ratio_threshold"] == pytest.approx(h_ref["keep_ratio_threshold"], abs=2 / N)
    assert sel.metrics["never_seen"] == 0
    # the checkpoint from rank 0 is an ordinary prunedata checkpoint of the unwrapped model
    ck = torch.load(ddp_run / "ck.pt", weights_only=False)
    assert ck["epoch"] == EPOCHS and not any(k.startswith("module.") for k in ck["model"])
    assert len(ck["extra"]["rng_per_rank"]) == WORLD


@pytest.mark.distributed
def test_killed_rank_fails_fast_then_resume_matches(ddp_run, tmp_path):
    from prunedata import Selection

    args = ["adapruner", "--out", str(tmp_path / "sel.json"), "--checkpoint", str(tmp_path / "ck.pt"),
            "--timeout", "60"]
    res = _wait(_launch(args + ["--die-at", "3:10"], tmp_path), 90)  # a hang would end in a kill (-9)
    assert res[1][0] == -signal.SIGKILL
    code, _, err = res[0]
    assert code == 3, err[-3000:]
    assert "rank 0 of 2" in err and "epoch 3" in err and "crashed" in err
    assert "resume=True" in err and "ck.pt" in err
    assert torch.load(tmp_path / "ck.pt", weights_only=False)["epoch"] == 3  # epochs 0..2 done
    assert not (tmp_path / "sel.json").exists()
    # resume from the last checkpoint: completes, and lands where the uninterrupted run did
    _ok(_wait(_launch(args + ["--resume"], tmp_path), 120))
    sel = Selection.load(tmp_path / "sel.json")
    full = Selection.load(ddp_run / "sel.json")
    np.testing.assert_array_equal(sel.kept, full.kept)
    np.testing.assert_allclose(sel.scores, full.scores, atol=1e-6)
    r0 = torch.load(tmp_path / "sel.json.rank0.pt", weights_only=False)
    f0 = torch.load(ddp_run / "sel.json.rank0.pt", weights_only=False)
    assert torch.allclose(r0["mask"], f0["mask"], atol=1e-6)


@pytest.mark.distributed
def test_resume_from_a_checkpoint_of_another_batch_size_is_refused_on_every_rank(ddp_run, tmp_path):
    # issue 17: the checkpoint's recipe is checked before anything is restored, the same way on all ranks
    shutil.copy(ddp_run / "ck.pt", tmp_path / "ck.pt")
    args = ["adapruner", "--out", str(tmp_path / "sel.json"), "--checkpoint", str(tmp_path / "ck.pt"), "--resume",
            "--batch-size", str(2 * B_RANK)]
    res = _wait(_launch(args, tmp_path), 90)
    for code, _, err in res:
        assert code == 2, err[-3000:]
        assert f"batch_size: {B_RANK} in the checkpoint, {2 * B_RANK} now" in err
    assert not (tmp_path / "sel.json").exists()


@pytest.mark.distributed
def test_hung_rank_makes_others_fail_after_timeout(tmp_path):
    args = ["adapruner", "--n", "256", "--out", str(tmp_path / "sel.json"), "--timeout", "8", "--hang-at", "1:2"]
    procs = _launch(args, tmp_path)
    try:
        out, err = procs[0].communicate(timeout=60)
    finally:
        procs[1].kill()  # the hung rank, by its own pid
        procs[1].communicate()
    assert procs[0].returncode == 3, err[-3000:]
    assert "did not respond within the timeout (8s)" in err and "epoch 1, step 2" in err
    assert "Pass checkpoint=" in err


def _unshare_ok() -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.distributed
@pytest.mark.skipif(not _unshare_ok(), reason="needs `unshare -rn` and `ip` (a private network namespace with only "
                    "loopback, so torchrun's store listens nowhere else)")
def test_example_under_torchrun_restarts_after_a_killed_rank(ddp_run, tmp_path):
    """The documented command line, run inside a network namespace where only 127.0.0.1 exists.

    Rank 1 kills itself mid-epoch in the first attempt; torchrun (--max-restarts=1) restarts both
    workers, which resume from rank 0's last checkpoint and end with the uninterrupted selection.
    """
    from prunedata import Selection

    out = tmp_path / "sel.json"
    torchrun = (f"{sys.executable} -m torch.distributed.run --nproc_per_node=2 --master_addr=127.0.0.1 "
                f"--master_port=29512 --max-restarts=1 examples/ddp_adapruner.py --max-samples {N} --epochs {EPOCHS} "
                f"--warmup-epochs {WARMUP} --keep-ratio {KEEP} --batch-size {B_RANK} --model {MODEL} "
                f"--seed {SEED} --out {out} --checkpoint {tmp_path / 'ck.pt'} --resume --simulate-failure 3:10")
    env = _env(0)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(k)
    r = subprocess.run(["unshare", "-rn", "sh", "-c", f"ip link set lo up && {torchrun}"],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "2 rank(s): kept" in r.stdout
    # (the survivor's own error may or may not be printed: torchrun stops it as soon as rank 1 dies)
    assert "rank 0 resumed from" in r.stderr and "at epoch 3" in r.stderr
    sel = Selection.load(out)
    full = Selection.load(ddp_run / "sel.json")
    np.testing.assert_array_equal(sel.kept, full.kept)
    assert sel.params["world_size"] == 2


# =========================================================================== single-process behaviour
def test_distributed_pruner_without_group_equals_adapruner():
    from torch.utils.data import TensorDataset

    from prunedata import AdaPruner
    from prunedata.distributed import DistributedAdaPruner, train_adapruner_ddp
    from prunedata.training import train_adapruner

    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(96, 5, generator=g), torch.randint(0, 3, (96,), generator=g))
    runs = []
    for cls, train in ((AdaPruner, train_adapruner), (DistributedAdaPruner, train_adapruner_ddp)):
        torch.manual_seed(1)
        model = torch.nn.Linear(5, 3)
        p = cls(96, 0.5, epochs=4, warmup_epochs=1)
        train(model, ds, p, batch_size=16, seed=3, show_progress=False)
        runs.append((p, model))
    (a, ma), (b, mb) = runs
    assert torch.equal(a.mask, b.mask) and torch.equal(ma.weight, mb.weight)
    np.testing.assert_array_equal(a.selection(ds).kept, b.selection(ds).kept)


def test_from_pruner_keeps_state_and_params():
    from prunedata import AdaPruner
    from prunedata.distributed import DistributedAdaPruner

    p = AdaPruner(20, 0.6, epochs=5, warmup_epochs=1, scale=50.0)
    with torch.no_grad():
        p.mask.copy_(torch.linspace(-1, 1, 20))
    p.set_epoch(2)
    q = DistributedAdaPruner.from_pruner(p)
    assert isinstance(q, DistributedAdaPruner) and q.params() == p.params()
    assert torch.equal(q.mask, p.mask) and q.epoch == 2
    assert DistributedAdaPruner.from_pruner(q) is q


def test_bad_inputs_have_clear_errors(monkeypatch):
    from torch.utils.data import TensorDataset

    from prunedata.distributed import DistributedAdaPruner, init_distributed, shard_indices, train_adapruner_ddp
    from prunedata.errors import PruneDataError

    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert init_distributed() is False  # plain `python script.py`: one process, nothing initialised
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(PruneDataError, match="both must be set.*torchrun"):
        init_distributed()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PruneDataError, match="MASTER_ADDR and MASTER_PORT not set"):
        init_distributed()
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(PruneDataError, match=r"RANK must be in \[0, WORLD_SIZE\)"):
        init_distributed()
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(PruneDataError, match="must be an integer"):
        init_distributed()
    with pytest.raises(PruneDataError, match="positive number of seconds"):
        init_distributed(timeout=0)
    ds = TensorDataset(torch.randn(10, 2), torch.zeros(10, dtype=torch.long))
    with pytest.raises(PruneDataError, match="9 mask entries but the dataset has 10"):
        train_adapruner_ddp(torch.nn.Linear(2, 2), ds, DistributedAdaPruner(9, 0.5, epochs=2, warmup_epochs=1))
    with pytest.raises(PruneDataError, match="batch_size"):
        train_adapruner_ddp(torch.nn.Linear(2, 2), ds, DistributedAdaPruner(10, 0.5, epochs=2, warmup_epochs=1),
                            batch_size=0)
    with pytest.raises(PruneDataError, match="rank must be in"):
        shard_indices(10, rank=2, world_size=2)
    parts = [shard_indices(10, r, 3) for r in range(3)]
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(10))


# =========================================================================== scores across ranks
@pytest.mark.distributed
def test_scores_and_influence_across_ranks_match_single_process(tmp_path, one_thread):
    from prunedata.datasets import FashionMNIST
    from prunedata.methods.influence import compute_influence
    from prunedata.methods.scoring import el2n_scores, grand_scores
    from prunedata.models import make_model
    from prunedata.training import fit

    n = 301  # odd: the shards differ in size
    ds = FashionMNIST(train=True, max_samples=n)
    torch.manual_seed(0)
    model = fit(make_model(MODEL), ds, epochs=1, batch_size=32, show_progress=False)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    out = tmp_path / "scores"
    _ok(_wait(_launch(["scores", "--n", str(n), "--out", str(out), "--model-path", str(tmp_path / "model.pt")],
                      tmp_path), 120))
    r0 = torch.load(f"{out}.rank0.pt", weights_only=False)
    r1 = torch.load(f"{out}.rank1.pt", weights_only=False)
    ref_el2n, ref_grand = el2n_scores(model, ds), grand_scores(model, ds)
    for r in (r0, r1):
        np.testing.assert_allclose(r["el2n"], ref_el2n, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(r["grand"], ref_grand, rtol=1e-6, atol=1e-7)
        for kind in ("exact", "kfac"):
            ref = compute_influence(model, ds, solver=kind, show_progress=False)
            assert r[f"S_{kind}"].shape == ref.S.shape == (n, 10 * 129)
            # the Hessian is summed in another order
            scale = float(ref.S.abs().max())
            assert float((r[f"S_{kind}"] - ref.S).abs().max()) <= 1e-6 * scale  # measured: 3e-10
            assert torch.allclose(r[f"h_{kind}"], ref.features.h) and torch.equal(r[f"y_{kind}"], ref.features.y)
    for k in ("el2n", "grand"):
        np.testing.assert_array_equal(r0[k], r1[k])
    assert torch.equal(r0["S_exact"], r1["S_exact"]) and torch.equal(r0["S_kfac"], r1["S_kfac"])
    np.testing.assert_array_equal(r0["kept"], r1["kept"])
    assert len(r0["kept"]) == n - n // 3
    # gather=False: each rank keeps its own contiguous shard's rows
    np.testing.assert_array_equal(np.concatenate([r0["shard_indices"], r1["shard_indices"]]), np.arange(n))
    np.testing.assert_array_equal(torch.cat([r0["shard_S"], r1["shard_S"]]).numpy(), r0["S_exact"].numpy())
    # a scoring function that fails on one rank fails on every rank, with the cause
    assert r1["flaky_error"] == "ValueError: broken shard"
    assert r0["flaky_error"].startswith("DistributedError") and "failed on rank 1" in r0["flaky_error"]
    assert "broken shard" in r0["flaky_error"]
    for r in (r0, r1):
        assert "DistributedAdaPruner" in r["plain_pruner_error"] and "drift" in r["plain_pruner_error"]


def test_scores_single_process_and_errors():
    from torch.utils.data import TensorDataset

    from prunedata.distributed import distributed_scores, gather_per_sample
    from prunedata.errors import PruneDataError

    ds = TensorDataset(torch.arange(6.0), torch.zeros(6, dtype=torch.long))
    np.testing.assert_array_equal(distributed_scores(lambda part: [float(x) ** 2 for x, _ in part], ds),
                                  np.arange(6.0) ** 2)
    with pytest.raises(PruneDataError, match="one score per sample"):
        distributed_scores(lambda part: np.zeros(3), ds)
    with pytest.raises(PruneDataError, match="computed on no rank"):
        gather_per_sample([0, 1], [1.0, 2.0], 3)
    with pytest.raises(PruneDataError, match="one row per index"):
        gather_per_sample([0, 1], [1.0], 2)


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
