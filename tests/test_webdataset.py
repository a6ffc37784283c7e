"""webdataset adapter: real tar shards of Fashion-MNIST images (PNG/JPEG) + .cls labels, read
through webdataset with 0 and 2 DataLoader workers, split by node and worker."""
from __future__ import annotations

import io
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image

from prunedata import AdaPruner, Selection
from prunedata.adapters import webdataset as pwds
from prunedata.errors import PruneDataError, SelectionFormatError, SelectionMismatchError
from prunedata.identity import keys_fingerprint

N_SHARDS, PER_SHARD = 4, 30
N = N_SHARDS * PER_SHARD


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG" if fmt == "png" else "JPEG", quality=95)
    return buf.getvalue()


def _write_shards(folder: Path, images: np.ndarray, labels: np.ndarray, n_shards: int, per_shard: int,
                  key_fmt: str = "s{shard}_{j:04d}"):
    folder.mkdir(parents=True, exist_ok=True)
    urls, keys, files = [], [], {}
    for s in range(n_shards):
        url = str(folder / f"train-{s:06d}.tar")
        with wds.TarWriter(url) as tw:
            for j in range(per_shard):
                i = s * per_shard + j
                key = key_fmt.format(shard=s, j=j)
                fmt = "png" if j % 3 else "jpg"
                rec = {"__key__": key, fmt: _encode(images[i], fmt), "cls": str(int(labels[i])).encode()}
                tw.write(rec)
                keys.append(key)
                files[(url, key)] = {k: v for k, v in rec.items() if k != "__key__"}
        urls.append(url)
    return urls, keys, files


class Shards:
    def __init__(self, folder, urls, keys, files, images, labels):
        self.folder, self.urls, self.keys, self.files = folder, urls, keys, files
        self.images, self.labels = images, labels
        self.label_of = {k: int(labels[i]) for i, k in enumerate(keys)}
        self.image_of = {k: images[i] for i, k in enumerate(keys)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory, fmnist_small):
    folder = tmp_path_factory.mktemp("shards")
    images = fmnist_small.data[:N].numpy()
    labels = fmnist_small.targets[:N].numpy()
    urls, keys, files = _write_shards(folder, images, labels, N_SHARDS, PER_SHARD)
    return Shards(folder, urls, keys, files, images, labels)


@pytest.fixture(scope="module")
def manifest(shards):
    return pwds.scan_shards(shards.urls)


@pytest.fixture(scope="module")
def selection(shards, manifest):
    rng = np.random.default_rng(0)
    kept = [k for k in shards.keys if rng.random() < 0.6]
    return pwds.keyed_selection(kept, manifest, method="random", params={"seed": 0})


def _loader(ds, num_workers):
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers)


def _keys_of(ds, num_workers=0):
    out = []
    for item in _loader(ds, num_workers):
        out.append(item if isinstance(item, str) else item[0])
    return out


# --------------------------------------------------------------------------- manifests and selections
def test_scan_manifest_roundtrip(shards, manifest, tmp_path):
    assert manifest.ids() == shards.keys
    assert manifest.num_samples == N and manifest.complete
    assert manifest.counts() == {f"train-{s:06d}.tar": PER_SHARD for s in range(N_SHARDS)}
    assert manifest.fingerprint == keys_fingerprint(shards.keys)
    # saved next to the shards, urls are stored relative so the folder can move
    moved = tmp_path / "moved"
    shutil.copytree(shards.folder, moved)
    manifest_in = pwds.ShardManifest([pwds.ShardInfo(str(moved / Path(u).name), s.keys)
                                      for u, s in zip(shards.urls, manifest.shards)])
    path = manifest_in.save(moved / "manifest.json")
    raw = json.loads(path.read_text())
    assert raw["shards"][0]["url"] == "train-000000.tar" and raw["num_samples"] == N
    again = pwds.load_manifest(moved)
    assert again.ids() == shards.keys and again.urls[0] == str(moved / "train-000000.tar")


def test_keyed_selection_file_and_index_conversion(shards, manifest, selection, tmp_path):
    path = selection.save(tmp_path / "sel.json")
    sel = Selection.load(path)
    assert sel.id_kind == "key" and sel.key_set == selection.key_set
    assert sel.fingerprint == manifest.fingerprint and sel.dataset_size == N
    per = pwds.kept_per_shard(sel)
    assert sum(v["num_kept"] for v in per.values()) == sel.num_kept
    assert per["train-000001.tar"]["num_kept"] == sum(k.startswith("s1_") for k in sel.keys)
    # index <-> key, scores follow their samples
    scores = np.arange(N, dtype=float)  # score = stream position
    idx_sel = Selection.from_mask([k in sel.key_set for k in shards.keys], method="x", scores=scores)
    keyed = pwds.to_keyed(idx_sel, manifest)
    assert keyed.key_set == sel.key_set
    pos_in_stream = {k: i for i, k in enumerate(shards.keys)}
    assert keyed.scores.tolist() == [pos_in_stream[k] for k in sorted(shards.keys)]
    back = pwds.to_index(keyed, manifest)
    assert np.array_equal(back.kept, idx_sel.kept) and np.array_equal(back.scores, scores)


def test_index_selection_needs_manifest(shards, manifest, selection):
    idx_sel = pwds.to_index(selection, manifest)
    with pytest.raises(SelectionFormatError, match="manifest"):
        pwds.select_keys(idx_sel)
    ds = pwds.pruned_webdataset(shards.urls, idx_sel, manifest=manifest).to_tuple("__key__")
    assert sorted(_keys_of(ds)) == sorted(selection.keys)


# --------------------------------------------------------------------------- the stage
def test_stage_drops_before_decode(shards, selection):
    decoded = []

    def counting_image_decoder(key, data):
        if key.endswith((".png", ".jpg")):
            decoded.append(key)
        return None  # fall through to the default decoders

    ds = wds.DataPipeline(
        wds.SimpleShardList(shards.urls), wds.split_by_worker, wds.tarfile_to_samples(),
        stage := pwds.select_keys(selection), wds.decode(counting_image_decoder, "pil"),
        wds.to_tuple("__key__", "png;jpg", "cls"),
    )
    got = list(ds)
    assert [k for k, _, _ in got] == [k for k in shards.keys if k in selection]  # stream order kept
    assert len(decoded) == selection.num_kept  # nothing pruned was decoded
    assert stage.num_seen == N and stage.num_kept == selection.num_kept
    for key, img, cls in got:
        assert cls == shards.label_of[key] and img.size == (28, 28)
    # fluid form: WebDataset(...).compose(stage); invert gives exactly the pruned ones
    inv = wds.WebDataset(shards.urls, shardshuffle=False).compose(pwds.select_keys(selection, invert=True))
    assert sorted(s["__key__"] for s in inv) == sorted(set(shards.keys) - selection.key_set)


def test_pruned_webdataset_skips_reading_pruned_files(shards, selection):
    def run(skip):
        ds = pwds.pruned_webdataset(shards.urls, selection, skip_pruned_reads=skip)
        stage = ds.pipeline[-1]
        keys = [s["__key__"] for s in ds]
        return keys, stage

    import pickle  # DataLoader workers started by "spawn" receive the pipeline pickled

    again = pickle.loads(pickle.dumps(pwds.pruned_webdataset(shards.urls, selection)))
    assert [s["__key__"] for s in again] == [k for k in shards.keys if k in selection]
    keys_skip, stage_skip = run(True)
    keys_full, stage_full = run(False)
    assert keys_skip == keys_full == [k for k in shards.keys if k in selection]
    assert stage_full.num_seen == N
    assert stage_skip.num_seen == selection.num_kept  # pruned samples never left the tar reader


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_each_kept_sample_once(shards, selection, num_workers):
    def to_tensor(img):
        return torch.from_numpy(np.asarray(img.convert("L"), dtype=np.uint8).copy())

    ds = (pwds.pruned_webdataset(shards.urls, selection).shuffle(16).decode("pil")
          .to_tuple("__key__", "png;jpg", "cls").map_tuple(None, to_tensor, None).batched(8))
    seen = Counter()
    for keys, x, y in _loader(ds, num_workers):
        assert x.shape[1:] == (28, 28) and len(keys) == x.shape[0] == y.shape[0]
        for k, img, label in zip(keys, x, y.tolist()):
            seen[k] += 1
            assert label == shards.label_of[k]
            ref = torch.from_numpy(shards.image_of[k]).int()
            err = (img.int() - ref).abs().float().mean()
            assert err < 3.0  # PNG exact, JPEG close
    assert set(seen) == selection.key_set and set(seen.values()) == {1}


def test_split_by_node_and_worker(shards, selection, monkeypatch):
    per_shard = pwds.kept_per_shard(selection)
    union = Counter()
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = wds.DataPipeline(
            wds.SimpleShardList(shards.urls), wds.split_by_node, wds.split_by_worker,
            wds.tarfile_to_samples(), pwds.select_keys(selection), wds.to_tuple("__key__"),
        )
        keys = _keys_of(ds, num_workers=2)
        expected = sum(per_shard[Path(u).name]["num_kept"] for u in shards.urls[rank::2])
        assert len(keys) == expected  # per-shard kept counts size each rank's epoch
        union.update(keys)
    assert set(union) == selection.key_set and set(union.values()) == {1}


def test_selection_for_other_shards_is_refused(shards, manifest, selection, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    renamed = other / "val-000000.tar"
    shutil.copy(shards.urls[0], renamed)
    with pytest.raises(SelectionMismatchError, match="was not made for"):
        list(pwds.pruned_webdataset([str(renamed)], selection))
    assert len(list(pwds.pruned_webdataset([str(renamed)], selection, check_shards=False))) > 0
    # a manifest of other shards does not match the selection's key set
    partial = pwds.scan_shards(shards.urls[:2])
    with pytest.raises(SelectionMismatchError, match="dataset of 120 samples"):
        pwds.select_keys(selection, manifest=partial)
    with pytest.raises(TypeError, match="Selection"):
        pwds.select_keys({"keys": []})


def test_stage_after_to_tuple_says_where_it_belongs(shards, selection):
    ds = wds.WebDataset(shards.urls, shardshuffle=False).to_tuple("png;jpg", "cls")
    with pytest.raises(PruneDataError, match="before to_tuple"):
        next(iter(ds.compose(pwds.select_keys(selection))))
    skipping = wds.WebDataset(shards.urls, shardshuffle=False).to_tuple("png;jpg", "cls")
    assert list(skipping.compose(pwds.select_keys(selection, handler=wds.ignore_and_continue))) == []


def test_duplicate_keys_need_shard_scheme(tmp_path, shards):
    images, labels = shards.images, shards.labels
    urls, _, _ = _write_shards(tmp_path / "dup", images, labels, 2, 10, key_fmt="img_{j:04d}")
    with pytest.raises(pwds.ManifestError, match="id_scheme='shard/key'"):
        pwds.scan_shards(urls)
    man = pwds.scan_shards(urls, id_scheme="shard/key")
    assert man.num_samples == 20 and man.ids()[10] == "train-000001.tar/img_0000"
    kept = [i for i in man.ids() if i.endswith(("0", "3"))]
    sel = pwds.keyed_selection(kept, man)
    got = [pwds.sample_id(s["__key__"], s["__url__"], "shard/key") for s in pwds.pruned_webdataset(urls, sel)]
    assert got == kept
    with pytest.raises(PruneDataError, match="file-level skipping"):
        pwds.select_keys(sel).files()
    out = pwds.write_pruned_shards(urls, sel, tmp_path / "dup_pruned")
    assert out.ids() == kept  # same layout keeps shard names, so shard/key ids stay valid


# --------------------------------------------------------------------------- pruned shards
def _read_raw(urls):
    return [(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")})
            for s in wds.WebDataset(urls, shardshuffle=False)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_write_pruned_shards(shards, selection, tmp_path, num_workers):
    out = pwds.write_pruned_shards(shards.urls, selection, tmp_path / "pruned")
    kept_in_order = [k for k in shards.keys if k in selection]
    assert out.complete and out.ids() == kept_in_order
    assert sorted(p.name for p in (tmp_path / "pruned").iterdir()) == sorted(
        [Path(u).name for u in shards.urls if pwds.kept_per_shard(selection)[Path(u).name]["num_kept"]]
        + ["manifest.json"])
    # keys, file contents (byte for byte) and order are preserved; read through a DataLoader
    ds = wds.WebDataset(out.urls, shardshuffle=False, nodesplitter=wds.split_by_node)
    got = {}
    for s in _loader(ds, num_workers):
        got[s["__key__"]] = {k: v for k, v in s.items() if not k.startswith("__")}
    assert set(got) == selection.key_set
    src = {k: (u, k) for u in shards.urls for k in shards.keys if (u, k) in shards.files}
    for key, files in got.items():
        assert files == shards.files[src[key]]
    assert [k for k, _ in _read_raw(out.urls)] == kept_in_order
    assert pwds.expand_shards(str(tmp_path / "pruned")) == out.urls  # the folder names its shards
    # the manifest on disk is the returned one, and says where it came from
    disk = pwds.load_manifest(tmp_path / "pruned")
    assert disk.ids() == kept_in_order and disk.extra["selection"]["fingerprint"] == selection.fingerprint
    # repacked into shards of at most 25
    rep = pwds.write_pruned_shards(shards.urls, selection, tmp_path / "repacked", maxcount=25, manifest_every=0)
    assert [s.num_samples for s in rep.shards][:-1] == [25] * (len(rep.shards) - 1)
    assert rep.ids() == kept_in_order and [k for k, _ in _read_raw(rep.urls)] == kept_in_order


def test_writer_bad_inputs(shards, selection, tmp_path):
    with pytest.raises(PruneDataError, match="overwrite the data being read"):
        pwds.write_pruned_shards(shards.urls, selection, shards.folder)
    pwds.write_pruned_shards(shards.urls[:1], pwds.select_keys(selection).selection, tmp_path / "o",
                             show_progress=False)
    with pytest.raises(PruneDataError, match="already exists"):
        pwds.write_pruned_shards(shards.urls[:1], selection, tmp_path / "o")
    with pytest.raises(PruneDataError, match="maxcount must be >= 1"):
        pwds.write_pruned_shards(shards.urls, selection, tmp_path / "p", maxcount=0)


# --------------------------------------------------------------------------- broken shards
def _cut_copy(shards, folder: Path, where: str):
    """Copies of the shards with the third cut off inside sample s2_0016: in the middle of a file's
    bytes ("data") or 100 bytes into a member header ("header", which plain tarfile reading takes
    for a clean end of the archive)."""
    import tarfile

    folder.mkdir()
    urls = []
    for u in shards.urls:
        shutil.copy(u, folder / Path(u).name)
        urls.append(str(folder / Path(u).name))
    data = Path(urls[2]).read_bytes()
    with tarfile.open(urls[2]) as tf:
        last = [ti for ti in tf.getmembers() if ti.name.startswith("s2_0016.")][-1]
    cut = last.offset_data + last.size // 2 if where == "data" else last.offset + 100
    Path(urls[2]).write_bytes(data[:cut])
    return urls


@pytest.fixture
def broken(shards, tmp_path):
    return _cut_copy(shards, tmp_path / "broken", "data")


def test_broken_shard_raises_by_default_and_continues_with_handler(broken, selection):
    with pytest.raises(Exception, match="train-000002.tar"):
        list(pwds.pruned_webdataset(broken, selection))
    with pytest.warns(UserWarning):
        keys = [s["__key__"] for s in pwds.pruned_webdataset(broken, selection, handler=wds.warn_and_continue)]
    kept = selection.key_set
    for s in (0, 1, 3):  # the intact shards are complete
        assert {k for k in keys if k.startswith(f"s{s}_")} == {k for k in kept if k.startswith(f"s{s}_")}
    assert 0 < sum(k.startswith("s2_") for k in keys) < sum(k.startswith("s2_") for k in kept)
    with pytest.raises(Exception, match="train-000002.tar"):
        pwds.scan_shards(broken)
    man = pwds.scan_shards(broken, handler=wds.ignore_and_continue)
    assert not man.complete and man.extra["errors"][0]["url"] == broken[2]
    assert len(man.shards) == 4 and man.shards[2].keys == [f"s2_{j:04d}" for j in range(16)]


@pytest.mark.parametrize("where", ["data", "header"])
def test_writer_keeps_what_it_wrote_when_a_shard_breaks(shards, selection, tmp_path, where):
    broken = _cut_copy(shards, tmp_path / "broken", where)
    out_dir = tmp_path / "out"
    with pytest.raises(Exception, match="train-000002.tar"):
        pwds.write_pruned_shards(broken, selection, out_dir)
    man = pwds.load_manifest(out_dir)
    assert not man.complete and "stopped_by" in man.extra
    names = [s.name for s in man.shards]
    assert names[:2] == ["train-000000.tar", "train-000001.tar"]
    assert not any(p.name.endswith(".partial") for p in out_dir.iterdir())
    # everything recorded is readable and whole; the broken shard's samples before the cut survive
    got = _read_raw(man.urls)
    assert [k for k, _ in got] == man.ids()
    assert all(set(files) in ({"png", "cls"}, {"jpg", "cls"}) for _, files in got)
    assert man.shards[0].num_samples == pwds.kept_per_shard(selection)["train-000000.tar"]["num_kept"]
    # the sample being read at the break (s2_0016) is dropped, the ones before it are kept
    assert [k for k in man.ids() if k.startswith("s2_")] == [k for k in selection.keys if "s2_0000" <= k < "s2_0016"]
    # with a continuing handler the writer finishes and lists the error
    with pytest.warns(UserWarning):
        done = pwds.write_pruned_shards(broken, selection, tmp_path / "out2", handler=wds.warn_and_continue)
    # ... but the shard it skipped part of is not complete (issue 17): neither is the manifest
    assert not done.complete and done.extra["errors"][0]["url"] == broken[2]
    assert [s.extra.get("partial", False) for s in done.shards] == [False, False, True, False]
    assert done.shards[-1].name == "train-000003.tar"


# --------------------------------------------------------------------------- AdaPruner on streams
def test_keyed_adapruner_equals_map_style(manifest):
    kw = dict(epochs=4, warmup_epochs=1, keep_ratio=0.5)
    keyed = pwds.KeyedAdaPruner(manifest, **kw)
    plain = AdaPruner(N, **kw)
    pos = {k: i for i, k in enumerate(sorted(manifest.ids()))}
    rng = np.random.default_rng(1)
    ids = manifest.ids()
    for epoch in range(4):
        keyed.set_epoch(epoch)
        plain.set_epoch(epoch)
        order = rng.permutation(N)
        for b in range(0, N, 16):
            keys = [ids[i] for i in order[b:b + 16]]
            losses = torch.tensor(rng.uniform(0.01, 3.0, len(keys)), dtype=torch.float32)
            lk = keyed.loss(keys, losses.clone().requires_grad_())
            lp = plain.loss(torch.tensor([pos[k] for k in keys]), losses.clone().requires_grad_())
            assert torch.allclose(lk, lp)
            lk.backward()
            lp.backward()
            keyed.step()
            plain.step()
        keyed.end_epoch()
        plain.end_epoch()
    assert torch.equal(keyed.pruner.mask, plain.mask)
    sel = keyed.selection()
    ref = plain.selection()
    assert sel.id_kind == "key" and sel.key_set == {keyed.keys[i] for i in ref.kept}
    assert np.array_equal(sel.scores, ref.scores) and sel.score_name == "mask_logit"


def test_keyed_adapruner_trains_on_stream(shards, tmp_path):
    manifest_path = pwds.scan_shards(shards.urls).save(tmp_path / "manifest.json")
    pruner = pwds.KeyedAdaPruner.from_manifest(manifest_path, keep_ratio=0.5, epochs=4, warmup_epochs=1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def to_x(img):
        return torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)

    ds = (wds.WebDataset(shards.urls, shardshuffle=False, nodesplitter=wds.split_by_node).shuffle(32)
          .decode("pil").to_tuple("__key__", "png;jpg", "cls").map_tuple(None, to_x, None).batched(16))
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    for epoch in range(pruner.epochs):
        pruner.set_epoch(epoch)
        for keys, x, y in loader:
            loss = pruner.loss(keys, F.cross_entropy(model(x), y, reduction="none"))
            opt.zero_grad()
            loss.backward()
            opt.step()
            pruner.step()
        pruner.end_epoch()
    assert [h["samples"] for h in pruner.history] == [N] * 4  # every sample once per epoch
    sel = pruner.selection()
    assert sel.metrics["never_seen"] == 0 and abs(sel.keep_ratio - 0.5) <= 0.02
    assert sel.fingerprint == keys_fingerprint(shards.keys) and sel.extra["shards"][0]["num_samples"] == 30
    logits = pruner.logits()
    assert min(logits[k] for k in sel.keys) >= max(logits[k] for k in set(shards.keys) - sel.key_set)
    path = sel.save(tmp_path / "adapruner.json")
    got = sorted(_keys_of(pwds.pruned_webdataset(shards.urls, path).to_tuple("__key__"), num_workers=2))
    assert got == sorted(sel.keys)
    # checkpoints: state round-trips, and refuse another key set
    other = pwds.KeyedAdaPruner(shards.keys[:-1], keep_ratio=0.5, epochs=4, warmup_epochs=1)
    with pytest.raises(SelectionMismatchError, match="another key set"):
        other.load_state_dict(pruner.state_dict())
    twin = pwds.KeyedAdaPruner.from_shards(shards.urls, keep_ratio=0.5, epochs=4, warmup_epochs=1)
    twin.load_state_dict(pruner.state_dict())
    assert twin.selection().key_set == sel.key_set


def test_keyed_adapruner_bad_inputs(manifest):
    pruner = pwds.KeyedAdaPruner(manifest, keep_ratio=0.5, epochs=3, warmup_epochs=1)
    with pytest.raises(PruneDataError, match="not in the pruner's key set"):
        pruner.loss(["s0_0000", "nope"], torch.ones(2))
    with pytest.raises(PruneDataError, match="sample keys"):
        pruner.loss(torch.arange(2), torch.ones(2))
    with pytest.raises(PruneDataError, match="reduction='none'"):
        pruner.loss(["s0_0000", "s0_0001"], torch.tensor(1.0))
    with pytest.raises(PruneDataError, match="strictly between 0 and 1"):
        pwds.KeyedAdaPruner(manifest, keep_ratio=70)
    with pytest.raises(PruneDataError, match="must be unique"):
        pwds.KeyedAdaPruner(["a", "a", "b"], keep_ratio=0.5)
    with pytest.raises(PruneDataError, match="mask entries"):
        pwds.KeyedAdaPruner(manifest, pruner=AdaPruner(5, 0.5))
    scheme = pwds.KeyedAdaPruner(["t.tar/a", "t.tar/b"], keep_ratio=0.5, id_scheme="shard/key")
    with pytest.raises(PruneDataError, match="__url__"):
        scheme.positions(["a"])
    assert scheme.positions(["b", "a"], urls=["/d/t.tar"] * 2).tolist() == [1, 0]


def test_manifest_bad_files(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"format": "prunedata.selection"}))
    with pytest.raises(pwds.ManifestError, match="not a prunedata shard manifest"):
        pwds.load_manifest(bad)
    bad.write_text("{not json")
    with pytest.raises(pwds.ManifestError, match="not a readable shard manifest"):
        pwds.load_manifest(bad)
    with pytest.raises(FileNotFoundError):
        pwds.load_manifest(tmp_path / "missing.json")
    with pytest.raises(PruneDataError, match="folder without a manifest.json"):
        pwds.expand_shards(tmp_path)
    with pytest.raises(PruneDataError, match="id_scheme must be one of"):
        pwds.scan_shards(["x.tar"], id_scheme="index")


# --------------------------------------------------------------------------- 2 ranks (gloo, CPU)
def _ddp_worker(argv) -> int:
    """``python tests/test_webdataset.py ddp --manifest M --init-method file://... --out DIR``:
    one rank of a 2-process AdaPruner run on a stream split by node and by 2 DataLoader workers."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["ddp"])
    p.add_argument("--manifest", required=True)
    p.add_argument("--init-method", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from prunedata.distributed import DistributedAdaPruner, get_rank, init_distributed

    init_distributed(init_method=a.init_method, timeout=60)
    rank = get_rank()
    man = pwds.load_manifest(a.manifest)
    pruner = pwds.KeyedAdaPruner(man, pruner=DistributedAdaPruner(man.num_samples, 0.5, epochs=3, warmup_epochs=1))
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def to_x(img):
        return torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32) / 255.0)

    ds = (wds.WebDataset(man.urls, shardshuffle=False, nodesplitter=wds.split_by_node).shuffle(16, seed=rank)
          .decode("pil").to_tuple("__key__", "png;jpg", "cls").map_tuple(None, to_x, None).batched(15))
    seen = []
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    for epoch in range(pruner.epochs):
        pruner.set_epoch(epoch)
        for keys, x, y in loader:
            seen.extend(keys)
            loss = pruner.loss(keys, F.cross_entropy(model(x), y, reduction="none"))
            opt.zero_grad()
            loss.backward()
            opt.step()
            pruner.step()
        pruner.end_epoch()
    out = Path(a.out)
    if rank == 0:
        pruner.selection().save(out / "selection.json")
    torch.save({"mask": pruner.pruner.mask.detach(), "seen": seen}, out / f"rank{rank}.pt")
    return 0


@pytest.mark.distributed
def test_keyed_adapruner_two_ranks_split_by_node(shards, manifest, tmp_path):
    import subprocess
    import sys
    import uuid

    root = Path(__file__).resolve().parents[1]
    manifest.save(tmp_path / "manifest.json")
    cmd = [sys.executable, str(Path(__file__)), "ddp", "--manifest", str(tmp_path / "manifest.json"),
           "--init-method", f"file://{tmp_path / ('store-' + uuid.uuid4().hex)}", "--out", str(tmp_path)]
    procs = []
    for r in range(2):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), GLOO_SOCKET_IFNAME="lo",
                   PRUNEDATA_NO_PROGRESS="1", OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for r, proc in enumerate(procs):
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        assert proc.returncode == 0, f"rank {r} exited with {proc.returncode}:\n{out}\n{err[-3000:]}"
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(states[0]["mask"], states[1]["mask"])  # one mask, identical on both ranks
    seen = Counter(states[0]["seen"]) + Counter(states[1]["seen"])
    assert set(seen) == set(shards.keys) and set(seen.values()) == {3}  # each sample once per epoch
    assert not set(states[0]["seen"]) & set(states[1]["seen"])  # the ranks stream disjoint shards
    sel = Selection.load(tmp_path / "selection.json")
    assert sel.id_kind == "key" and abs(sel.keep_ratio - 0.5) <= 0.02
    assert sel.metrics["never_seen"] == 0  # rank 0 knows the samples only rank 1 streamed
    mask = dict(zip(sorted(shards.keys), states[0]["mask"].tolist()))
    assert min(mask[k] for k in sel.keys) >= max(mask[k] for k in set(shards.keys) - sel.key_set)

if __name__ == "__main__":
    import sys

    raise SystemExit(_ddp_worker(sys.argv[1:]))
