"""Fault-injection suite (issue 17): nothing lost, nothing silent.

Each test injects real faults and checks that no work is lost and no fault passes silently:

* SIGKILL of a real ``prunedata prune`` process (subprocess) during training, during a checkpoint
  write and during the selection write, then ``--resume``: identical selection, no temp file left;
* tar shards cut at a file boundary, inside a member header and inside a member's data, read
  through ``select_keys``, ``pruned_webdataset`` and ``write_pruned_shards``;
* outputs on a read-only filesystem and on a full disk: a real tmpfs in a private user+mount
  namespace (``unshare -rm``) where the runner allows it, else (and always, as well) a documented
  injection at the write call (``os.replace`` / ``tempfile.mkstemp`` raising ``OSError(EROFS/ENOSPC)``).
  Running as root ignores ``chmod``, so permissions alone cannot stand in for a read-only disk.

``FAULTS`` counts the faults injected (printed at the end with ``-s``; recorded in BENCHMARKS.md).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from prunedata import Selection
from prunedata.errors import OutputError, PruneDataError

wds = pytest.importorskip("webdataset")
from prunedata.adapters import webdataset as pwds  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAULTS = {"count": 0}


def _fault(n: int = 1) -> None:
    FAULTS["count"] += n


@pytest.fixture(scope="module", autouse=True)
def _report_faults():
    yield
    print(f"\nfault-injection suite: {FAULTS['count']} faults injected")


# =========================================================================== shards
PER_SHARD, N_SHARDS = 20, 3


def _write_shards(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    urls, keys = [], []
    rng = np.random.default_rng(0)
    for s in range(N_SHARDS):
        url = str(folder / f"part-{s:04d}.tar")
        with wds.TarWriter(url) as tw:
            for j in range(PER_SHARD):
                k = f"s{s}_{j:03d}"
                x = rng.normal(size=6).astype(np.float32)
                tw.write({"__key__": k, "x.npy": x.tobytes(), "cls": str(j % 3).encode()})
                keys.append(k)
        urls.append(url)
    return urls, keys


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    urls, keys = _write_shards(tmp_path_factory.mktemp("shards"))
    man = pwds.scan_shards(urls)
    kept = [k for i, k in enumerate(keys) if i % 5 != 0]  # 16 of 20 per shard
    sel = pwds.keyed_selection(kept, man, method="test")
    return urls, keys, sel


def _cut(urls, folder: Path, where: str, sample: str = "s1_010"):
    """Copies of the shards with the second one cut at the start of ``sample``'s first member
    ("boundary": exactly between two files, where tar reading sees a clean end), 200 bytes into that
    member's header ("header") or in the middle of its data ("data")."""
    folder.mkdir()
    out = []
    for u in urls:
        shutil.copy(u, folder / Path(u).name)
        out.append(str(folder / Path(u).name))
    with tarfile.open(out[1]) as tf:
        members = [ti for ti in tf.getmembers() if ti.name.startswith(sample + ".")]
    first = members[0]
    cut = {"boundary": first.offset, "header": first.offset + 200, "data": first.offset_data + first.size // 2}[where]
    data = Path(out[1]).read_bytes()
    Path(out[1]).write_bytes(data[:cut])
    _fault()
    return out


def _pipeline(urls, sel, handler=None):
    kw = {} if handler is None else {"handler": handler}
    return wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(**kw), pwds.select_keys(sel, **kw))


@pytest.mark.parametrize("where", ["boundary", "header", "data"])
def test_cut_shard_is_never_read_silently(shard_set, tmp_path, where):
    urls, keys, sel = shard_set
    cut = _cut(urls, tmp_path / "cut", where)
    kept_total = sel.num_kept
    # default handler: an error naming the shard, from the pipeline stage and from pruned_webdataset
    with pytest.raises(Exception, match="part-0001.tar"):
        list(_pipeline(cut, sel))
    with pytest.raises(Exception, match="part-0001.tar"):
        list(pwds.pruned_webdataset(cut, sel))
    # a continuing handler goes on, but says so (a warning naming the shard), never silently
    for make in (lambda: _pipeline(cut, sel, wds.warn_and_continue),
                 lambda: pwds.pruned_webdataset(cut, sel, handler=wds.warn_and_continue)):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            got = [s["__key__"] for s in make()]
        assert len(got) < kept_total
        assert any("part-0001.tar" in str(x.message) for x in w), [str(x.message) for x in w]
        assert {k for k in got if not k.startswith("s1_")} == {k for k in sel.keys if not k.startswith("s1_")}
    # the pruned-shard writer with a continuing handler does not call the result complete
    with pytest.warns(UserWarning):
        man = pwds.write_pruned_shards(cut, sel, tmp_path / "out", handler=wds.warn_and_continue,
                                       show_progress=False)
    assert not man.complete
    assert [s.extra.get("partial", False) for s in man.shards] == [False, True, False]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["complete"] is False


def test_stage_counts_passes_and_intact_shards_pass(shard_set):
    urls, keys, sel = shard_set
    stage = pwds.select_keys(sel)
    got = [s["__key__"] for s in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(), stage)]
    assert got == [k for k in keys if k in sel.key_set] and stage.incomplete == []
    inv = pwds.select_keys(sel, invert=True)
    got = [s["__key__"] for s in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(), inv)]
    assert len(got) == len(keys) - sel.num_kept


def test_garbled_member_header_in_the_middle_of_a_shard(shard_set, tmp_path):
    urls, keys, sel = shard_set
    bad = tmp_path / "bad"
    bad.mkdir()
    out = [shutil.copy(u, bad / Path(u).name) for u in urls]
    with tarfile.open(out[2]) as tf:
        ti = [t for t in tf.getmembers() if t.name.startswith("s2_005.")][0]
    data = bytearray(Path(out[2]).read_bytes())
    data[ti.offset:ti.offset + 512] = os.urandom(512)  # corrupt (checksum fails), not truncated
    Path(out[2]).write_bytes(bytes(data))
    _fault()
    with pytest.raises(Exception, match="part-0002.tar"):
        list(pwds.pruned_webdataset([str(u) for u in out], sel))


# =========================================================================== KeyedAdaPruner on streams
def _stream(urls, *, split: bool):
    stages = [wds.SimpleShardList(urls)]
    if split:
        stages.append(wds.split_by_worker)
    stages += [wds.tarfile_to_samples(),
               wds.map(lambda s: (s["__key__"], torch.from_numpy(np.frombuffer(s["x.npy"], np.float32).copy()),
                                  int(s["cls"]))),
               wds.batched(10)]
    return wds.DataPipeline(*stages)


def test_keyed_adapruner_warns_when_workers_repeat_the_stream(shard_set, caplog):
    urls, keys, _ = shard_set
    for split, expect in ((False, True), (True, False)):
        pr = pwds.KeyedAdaPruner(keys, keep_ratio=0.5, epochs=2, warmup_epochs=1)
        loader = torch.utils.data.DataLoader(_stream(urls, split=split), batch_size=None, num_workers=2)
        caplog.clear()
        pr.set_epoch(0)
        n = 0
        for k, x, y in loader:
            pr.loss(list(k), torch.rand(len(k)) + 0.1)
            n += len(k)
        warned = any("came back within epoch 0" in r.getMessage() for r in caplog.records)
        assert n == (2 if not split else 1) * len(keys)
        assert warned is expect, (split, n)
    _fault()


def _keyed_run(urls, keys, ckpt, *, stop=None, resume=False):
    from prunedata.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pr = pwds.KeyedAdaPruner(keys, keep_ratio=0.6, epochs=4, warmup_epochs=1)
    start = load_checkpoint(ckpt, model=model, optimizer=opt, pruner=pr) if resume else 0
    for epoch in range(start, pr.epochs):
        pr.set_epoch(epoch)
        for k, x, y in _stream(urls, split=True):
            loss = pr.loss(list(k), torch.nn.functional.cross_entropy(model(x), torch.as_tensor(y), reduction="none"))
            opt.zero_grad()
            loss.backward()
            opt.step()
            pr.step()
        pr.end_epoch()
        save_checkpoint(ckpt, model=model, optimizer=opt, pruner=pr, epoch=epoch + 1)
        if stop is not None and epoch + 1 >= stop:
            break
    return pr


def test_keyed_adapruner_resumes_to_the_uninterrupted_selection(shard_set, tmp_path):
    urls, keys, _ = shard_set
    full = _keyed_run(urls, keys, tmp_path / "a.pt")
    _keyed_run(urls, keys, tmp_path / "b.pt", stop=2)
    _fault()  # the run stops after epoch 2 as if killed
    resumed = _keyed_run(urls, keys, tmp_path / "b.pt", resume=True)
    assert resumed.epoch == 4
    torch.testing.assert_close(full.pruner.mask.detach(), resumed.pruner.mask.detach(), rtol=0, atol=0)
    assert full.selection().keys == resumed.selection().keys
    # a checkpoint of another key set or keep ratio is refused, naming what differs
    other = pwds.KeyedAdaPruner(keys[:-1], keep_ratio=0.6, epochs=4, warmup_epochs=1)
    from prunedata.checkpoint import load_checkpoint

    with pytest.raises(PruneDataError, match="another key set"):
        load_checkpoint(tmp_path / "b.pt", pruner=other)
    with pytest.raises(PruneDataError, match="keep_ratio"):
        load_checkpoint(tmp_path / "b.pt", pruner=pwds.KeyedAdaPruner(keys, keep_ratio=0.5, epochs=4, warmup_epochs=1))


# =========================================================================== outputs that cannot be written
def test_atomic_write_failures_name_the_file_and_leave_nothing(tmp_path, monkeypatch):
    from prunedata import _io

    p = tmp_path / "sel.json"
    p.write_text("old")
    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES):
        def boom(*a, _code=code, **k):
            raise OSError(_code, os.strerror(_code))

        with monkeypatch.context() as m:
            m.setattr(_io.os, "fsync", boom)  # the temp file exists and holds data when this fails
            with pytest.raises(OutputError) as ei:
                _io.atomic_write_text(p, "new")
        _fault()
        assert str(p) in str(ei.value) and ".tmp" not in str(ei.value) and ei.value.errno == code
        assert os.strerror(code) in str(ei.value)
        assert sorted(f.name for f in tmp_path.iterdir()) == ["sel.json"] and p.read_text() == "old"
    # a writer killed mid-write leaves its temp file: the next write of that file removes it
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{_io._tmp_prefix('sel.json')}{dead.pid}.abc123.tmp"
    stale.write_bytes(b"half")
    live = tmp_path / f"{_io._tmp_prefix('sel.json')}{os.getppid()}.abc124.tmp"  # a live writer's: kept
    live.write_bytes(b"busy")
    _io.atomic_write_text(p, "new")
    assert not stale.exists() and live.exists() and p.read_text() == "new"
    live.unlink()


def test_check_writable_fails_before_the_work(tmp_path, monkeypatch):
    from prunedata import _io

    def ro(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(_io.tempfile, "mkstemp", ro)
    with pytest.raises(OutputError, match=r"cannot write selection file .*x\.json: Read-only file system"):
        _io.check_writable(tmp_path / "x.json", "selection file")
    _fault()
    assert list(tmp_path.iterdir()) == []


def test_cli_read_only_output_fails_before_training(tmp_path, monkeypatch, capsys):
    """Injection at the write call (works as root and everywhere): the command stops before loading
    data or training, with one line naming the output."""
    from prunedata import _io, cli

    def ro(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    trained = []
    monkeypatch.setattr(_io.tempfile, "mkstemp", ro)
    monkeypatch.setattr(cli, "load_dataset", lambda *a, **k: trained.append(1))
    rc = cli.main(["prune", "fashion-mnist", "--max-samples", "100", "-o", str(tmp_path / "ro" / "s.json")])
    err = capsys.readouterr().err
    _fault()
    assert rc == 2 and not trained
    assert err.strip().count("\n") == 0 and "Read-only file system" in err and "s.json" in err
    rc = cli.main(["train", "fashion-mnist", "--max-samples", "100", "-o", str(tmp_path / "ro" / "r.json")])
    assert rc == 2 and not trained and "r.json" in capsys.readouterr().err
    _fault()


def _unshare_ok() -> bool:
    if shutil.which("unshare") is None or sys.platform != "linux":
        return False
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=8k tmpfs /mnt 2>/dev/null || "
                        "mount -t tmpfs -o size=8k tmpfs /tmp"], capture_output=True)
    return r.returncode == 0


CLI = [sys.executable, "-m", "prunedata"]
SMALL = ["fashion-mnist", "--max-samples", "240", "--epochs", "3", "--model", "linear", "--batch-size", "32",
         "--keep-ratio", "0.5", "--no-progress"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PRUNEDATA_NO_PROGRESS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


@pytest.mark.skipif(not _unshare_ok(), reason="no private user+mount namespace here (unshare -rm); the injected "
                    "variants above cover read-only and full-disk outputs")
def test_cli_on_a_real_read_only_and_full_filesystem(tmp_path, reference):
    """A real tmpfs in a private mount namespace: read-only -> refused before training; 4 KiB full
    disk -> the selection write fails with one line naming the file, no temp file left, and the
    checkpoint (on another disk) lets --resume finish without training again."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ck = tmp_path / "ck.pt"
    q = " ".join
    script = textwrap.dedent(f"""
        set -u
        mount -t tmpfs -o size=64k tmpfs {mnt} && mount -o remount,ro {mnt} || exit 90
        {q(CLI)} prune {q(SMALL)} -o {mnt}/sel.json; echo "rc_ro=$?"
        umount {mnt} && mount -t tmpfs -o size=4k tmpfs {mnt} || exit 91
        {q(CLI)} prune {q(SMALL)} --checkpoint {ck} -o {mnt}/sel.json --report {tmp_path}/r.txt; echo "rc_full=$?"
        ls -A {mnt}; echo "listed"
        umount {mnt}
        {q(CLI)} -v prune {q(SMALL)} --checkpoint {ck} --resume -o {mnt}/sel.json --report {tmp_path}/r.txt; echo "rc_resume=$?"
    """)
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=_env(), timeout=300)
    _fault(2)
    out, err = r.stdout, r.stderr
    assert "rc_ro=2" in out, (out, err)
    assert "cannot write selection file" in err and "Read-only file system" in err
    assert "rc_full=2" in out, (out, err)
    assert "No space left on device" in err and f"{mnt}/sel.json" in err and "--resume" in err
    listing = out.split("rc_full=2", 1)[1].split("listed", 1)[0]
    assert ".tmp" not in listing and "sel.json" not in listing
    assert "rc_resume=0" in out and "at epoch 3" in err, err[-3000:]
    assert np.array_equal(Selection.load(mnt / "sel.json").kept, reference.kept)


# =========================================================================== SIGKILL of the CLI
_KILLER = textwrap.dedent("""
    import os, signal, sys
    point, target, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    count = [0]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "step":          # during training: the nth mask/model step
        from prunedata.adapruner import AdaPruner
        orig = AdaPruner.step
        def step(self):
            count[0] += 1
            if count[0] == nth:
                die()
            return orig(self)
        AdaPruner.step = step
    else:                        # during the nth write of `target`: after its data is written ("fsync") or
        from prunedata import _io   # when it is about to be renamed into place ("replace")
        real = getattr(_io.os, point)
        state = {"tmp": None}
        orig_mkstemp = _io.tempfile.mkstemp
        def mkstemp(*a, **k):
            fd, path = orig_mkstemp(*a, **k)
            if os.path.basename(path).startswith("." + target + "."):
                state["tmp"] = path
            return fd, path
        _io.tempfile.mkstemp = mkstemp
        def hook(*a, **k):
            if point == "replace" and str(a[1]).endswith(target) or point == "fsync" and state["tmp"]:
                count[0] += 1
                state["tmp"] = None
                if count[0] == nth:
                    die()
            return real(*a, **k)
        setattr(_io.os, point, hook)
    from prunedata.cli import main
    sys.exit(main(sys.argv[4:]))
""")


def _run_cli(args, cwd, killer=None):
    cmd = [sys.executable, "-c", _KILLER, *killer, *args] if killer else CLI + args
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env(), timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    r = _run_cli(["prune", *SMALL, "-o", "sel.json", "--checkpoint", "ck.pt"], d)
    assert r.returncode == 0, r.stderr
    return Selection.load(d / "sel.json")


@pytest.mark.parametrize("point, target, nth", [
    ("step", "-", 12),             # epoch 2 of 3 (8 steps an epoch), after the first checkpoint
    ("fsync", "ck.pt", 2),         # the second checkpoint's bytes written, not yet renamed
    ("replace", "ck.pt", 3),       # the last checkpoint complete in its temp file
    ("replace", "sel.json", 1),    # training done, selection being put in place
])
def test_cli_killed_and_resumed_gives_the_uninterrupted_selection(tmp_path, reference, point, target, nth):
    args = ["prune", *SMALL, "-o", "sel.json", "--checkpoint", "ck.pt"]
    r = _run_cli(args, tmp_path, killer=[point, target, str(nth)])
    _fault()
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    assert not (tmp_path / "sel.json").exists()  # never a half-written selection
    if (tmp_path / "ck.pt").exists():
        torch.load(tmp_path / "ck.pt", weights_only=False)  # the checkpoint on disk is always whole
    # resume in this process (no second interpreter start), on one thread like the reference
    from prunedata.cli import main

    threads = torch.get_num_threads()
    cwd = os.getcwd()
    try:
        torch.set_num_threads(1)
        os.chdir(tmp_path)
        assert main([*args, "--resume"]) == 0
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    sel = Selection.load(tmp_path / "sel.json")
    assert np.array_equal(sel.kept, reference.kept)
    np.testing.assert_array_equal(sel.scores, reference.scores)
    assert sel.params["proxy"]["lr"] == reference.params["proxy"]["lr"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # killed writers' temps cleaned


def test_pruned_shard_writer_killed_mid_shard_leaves_no_partial_after_the_rerun(shard_set, tmp_path):
    urls, keys, sel = shard_set
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import os, signal, sys
        import webdataset as wds
        from prunedata.adapters import webdataset as pwds
        from prunedata.selection import Selection
        real = wds.TarWriter.write
        n = [0]
        def write(self, rec):
            n[0] += 1
            if n[0] == 25:  # in the second shard
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, rec)
        wds.TarWriter.write = write
        pwds.write_pruned_shards({urls!r}, Selection.load(sys.argv[1]), {str(out)!r}, show_progress=False)
    """)
    sel.save(tmp_path / "sel.json")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "sel.json")], env=_env(), capture_output=True,
                       text=True, timeout=120)
    _fault()
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert any(p.name.endswith(".partial") for p in out.iterdir())
    man = pwds.load_manifest(out)
    assert not man.complete  # what the killed run recorded is marked unfinished
    done = pwds.write_pruned_shards(urls, sel, out, overwrite=True, show_progress=False)
    assert done.complete and done.ids() == [k for k in keys if k in sel.key_set]
    assert not [p.name for p in out.iterdir() if p.name.endswith((".partial", ".tmp"))]
