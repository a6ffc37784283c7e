import gzip
import json
import os

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from prunedata import (IndexedDataset, PrunedDataset, Selection, SelectionFormatError, SelectionMismatchError,
                       dataset_fingerprint)
from prunedata._io import atomic_write_bytes


def make_ds(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, generator=g), torch.randint(0, 4, (n,), generator=g))


def test_roundtrip_is_readable_and_complete(tmp_path):
    ds = make_ds()
    sel = Selection(kept=[5, 1, 3, 3], dataset_size=len(ds), method="test", params={"a": 1},
                    fingerprint=dataset_fingerprint(ds), scores=np.arange(50) / 10, score_name="s",
                    metrics={"m": 2.5})
    p = sel.save(tmp_path / "sel.json")
    text = p.read_text()
    head = json.loads(text)
    assert head["format"] == "prunedata.selection" and head["format_version"] == 1
    assert head["num_kept"] == 3 and head["dataset_size"] == 50 and head["method"] == "test"
    # descriptive fields come before the big arrays, so `head` shows them
    assert text.index('"method"') < text.index('"kept"')
    back = Selection.load(p, ds)
    assert back.kept.tolist() == [1, 3, 5]
    assert back.params == {"a": 1} and back.metrics == {"m": 2.5}
    np.testing.assert_allclose(back.scores, np.arange(50) / 10)
    assert back.keep_ratio == pytest.approx(3 / 50)


def test_gzip_roundtrip(tmp_path):
    ds = make_ds()
    sel = Selection.from_mask(np.arange(50) % 2 == 0, method="m", fingerprint=dataset_fingerprint(ds))
    p = sel.save(tmp_path / "sel.json.gz")
    assert gzip.decompress(p.read_bytes()).startswith(b"{")
    assert Selection.load(p, ds).num_kept == 25


def test_refuses_other_length(tmp_path):
    sel = Selection(kept=[0, 1], dataset_size=50, method="m", fingerprint=dataset_fingerprint(make_ds()))
    p = sel.save(tmp_path / "s.json")
    with pytest.raises(SelectionMismatchError, match="50 samples.*this dataset has 60"):
        Selection.load(p, make_ds(60))
    with pytest.raises(SelectionMismatchError, match="60"):
        PrunedDataset(make_ds(60), p)


def test_refuses_other_content_same_length(tmp_path):
    sel = Selection(kept=[0, 1], dataset_size=50, method="m", fingerprint=dataset_fingerprint(make_ds(seed=0)))
    p = sel.save(tmp_path / "s.json")
    other = make_ds(seed=1)
    with pytest.raises(SelectionMismatchError, match="fingerprint"):
        Selection.load(p, other)
    # explicitly non-strict: loads with a warning
    assert Selection.load(p, other, strict=False).num_kept == 2


def test_fingerprint_is_stable_and_sees_labels():
    a, b = make_ds(), make_ds()
    assert dataset_fingerprint(a) == dataset_fingerprint(b)
    assert dataset_fingerprint(IndexedDataset(a)) == dataset_fingerprint(a)
    x, y = a.tensors
    y2 = y.clone()
    y2[7] = (y2[7] + 1) % 4

    class WithTargets(torch.utils.data.Dataset):
        def __init__(self, targets):
            self.targets = targets

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return i

    assert dataset_fingerprint(WithTargets(y)) != dataset_fingerprint(WithTargets(y2))


@pytest.mark.parametrize("field,value,msg", [
    ("format_version", 99, "version 99"),
    ("format", "other", "not a prunedata selection"),
    ("num_kept", 7, "num_kept=7"),
    ("kept", [0, 500], r"\[0, 50\)"),
])
def test_damaged_files_are_rejected(tmp_path, field, value, msg):
    d = json.loads(Selection(kept=[0, 1], dataset_size=50).to_json())
    d[field] = value
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(SelectionFormatError, match=msg):
        Selection.load(p)


def test_not_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{truncated")
    with pytest.raises(SelectionFormatError, match="not a readable selection"):
        Selection.load(p)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Selection.load(tmp_path / "missing.json")


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    atomic_write_bytes(p, b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"old"
    assert [f.name for f in tmp_path.iterdir()] == ["f.bin"]  # no temp file left behind


def test_pruned_dataset_behaves_like_a_dataset():
    ds = make_ds()
    sel = Selection(kept=[2, 10, 49], dataset_size=50, fingerprint=dataset_fingerprint(ds))
    pd = PrunedDataset(ds, sel)
    assert len(pd) == 3
    assert torch.equal(pd[1][0], ds[10][0])
    assert pd.original_index(2) == 49
    batches = list(torch.utils.data.DataLoader(pd, batch_size=2))
    assert [b[0].shape[0] for b in batches] == [2, 1]
    assert torch.equal(batches[0][0][1], ds[10][0])
    with pytest.raises(IndexError):
        pd[3]


def test_pruned_dataset_rejects_keyed_selection():
    sel = Selection.from_keys(["a"], ["a", "b"])
    with pytest.raises(Exception, match="keyed"):
        PrunedDataset(make_ds(2), sel, check=False)


def test_keyed_selection_roundtrip(tmp_path):
    sel = Selection.from_keys(["k3", "k1"], ["k1", "k2", "k3", "k4"], method="m")
    back = Selection.load(sel.save(tmp_path / "k.json"))
    assert back.id_kind == "key" and back.keys == ["k1", "k3"]
    assert "k3" in back and "k2" not in back
    assert back.keep_ratio == 0.5
    with pytest.raises(SelectionFormatError, match="not in the dataset's key set"):
        Selection.from_keys(["zz"], ["k1"])


def test_class_counts():
    sel = Selection(kept=[0, 1, 2], dataset_size=6)
    assert sel.class_counts([0, 0, 1, 1, 2, 2]) == {0: {"kept": 2, "total": 2}, 1: {"kept": 1, "total": 2},
                                                     2: {"kept": 0, "total": 2}}
    with pytest.raises(SelectionMismatchError):
        sel.class_counts([0, 1])


# --------------------------------------------------------------------------- issue 17: ids and sizes refused, not truncated
def _saved_dict(tmp_path):
    sel = Selection(kept=list(range(0, 300, 1)), dataset_size=400)
    return json.loads(sel.to_json())


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["kept"].__setitem__(7, d["kept"][7] + 0.5), r"whole numbers.*7\.5"),
    (lambda d: d["kept"].__setitem__(3, "3"), "whole numbers"),
    (lambda d: d["kept"].__setitem__(3, True), "whole numbers"),
    (lambda d: d.update(dataset_size="many"), "dataset_size must be a whole number.*'many'"),
    (lambda d: d.update(dataset_size=float("nan")), "dataset_size must be a whole number.*nan"),
    (lambda d: d.update(dataset_size=400.5), "dataset_size must be a whole number"),
])
def test_non_integer_ids_and_sizes_are_refused_not_truncated(tmp_path, edit, match):
    d = _saved_dict(tmp_path)
    edit(d)
    p = tmp_path / "s.json"
    p.write_text(json.dumps(d))
    with pytest.raises(SelectionFormatError, match=match):
        Selection.load(p)


def test_duplicated_id_message_counts_the_ids_the_file_lists(tmp_path):
    d = _saved_dict(tmp_path)
    d["kept"].append(5)  # 301 ids listed, 300 distinct; num_kept still says 300
    p = tmp_path / "s.json"
    p.write_text(json.dumps(d))
    with pytest.raises(SelectionFormatError, match="lists 301 ids but only 300 distinct ones"):
        Selection.load(p)
    d["kept"] = [float(k) for k in d["kept"][:-1]]  # whole-number floats are ids, loaded exactly
    p.write_text(json.dumps(d))
    assert Selection.load(p).kept.tolist() == list(range(300))
