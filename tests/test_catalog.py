"""Datasets by name (prunedata.catalog) and every form through the command line.

Each torchvision format is written by the test in the format's own on-disk layout (IDX files, CIFAR
pickles, SVHN .mat), small enough to train on in a second, and its classes are made learnable so the
trained accuracies mean something.
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prunedata import Selection
from prunedata.catalog import input_shape, load_dataset, num_classes, register_dataset
from prunedata.cli import main
from prunedata.errors import PruneDataError

import dataformats

N_TRAIN, N_TEST = dataformats.N_TRAIN, dataformats.N_TEST
make_mnist_like, make_cifar, make_svhn = dataformats.make_mnist_like, dataformats.make_cifar, dataformats.make_svhn


@pytest.mark.parametrize("name,folder,gz", [("mnist", "MNIST", False), ("kmnist", "KMNIST", True),
                                            ("fashionmnist", "FashionMNIST", False)])
def test_idx_layouts_read_compressed_or_not(tmp_path, name, folder, gz):
    make_mnist_like(tmp_path, folder, gz=gz)
    train = load_dataset(name, root=str(tmp_path))
    test = load_dataset(name, root=str(tmp_path), train=False)
    assert len(train) == N_TRAIN and len(test) == N_TEST
    x, y = train[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= y < 10
    assert input_shape(train) == (1, 28, 28) and num_classes(train) == 10
    raw = tmp_path / folder / "raw"
    stem = "train-labels-idx1-ubyte"
    data = gzip.decompress((raw / (stem + ".gz")).read_bytes()) if gz else (raw / stem).read_bytes()
    assert np.array_equal(np.asarray(train.targets), np.frombuffer(data[8:], dtype=np.uint8))


def test_cifar10_cifar100_svhn_layouts(tmp_path):
    make_cifar(tmp_path / "c10")
    make_cifar(tmp_path / "c100", hundred=True)
    make_svhn(tmp_path / "svhn")
    c10 = load_dataset("cifar10", root=str(tmp_path / "c10"))
    assert len(c10) == N_TRAIN and c10.classes[5] == "dog" and input_shape(c10) == (3, 32, 32)
    c100 = load_dataset("CIFAR-100", root=str(tmp_path / "c100"), train=False)
    assert len(c100) == N_TEST and num_classes(c100) == 100
    svhn = load_dataset("svhn", root=str(tmp_path / "svhn"))
    assert len(svhn) == N_TRAIN and int(torch.as_tensor(svhn.targets).max()) <= 9
    from scipy.io import loadmat

    y = loadmat(str(tmp_path / "svhn" / "train_32x32.mat"))["y"].reshape(-1)
    assert np.array_equal(np.asarray(svhn.targets), np.where(y == 10, 0, y))  # the digit 0 is label 0
    # batched fetch (the DataLoader's path) equals item by item
    batch = c10.__getitems__([0, 7, 3])
    for (xb, yb), i in zip(batch, [0, 7, 3]):
        xi, yi = c10[i]
        assert yb == yi and torch.allclose(xb, xi)


def test_missing_files_say_where_and_how(tmp_path, capsys):
    with pytest.raises(PruneDataError, match="--download"):
        load_dataset("cifar10", root=str(tmp_path))
    with pytest.raises(PruneDataError, match="--root"):
        load_dataset("mnist")
    bad = tmp_path / "cifar-10-batches-py"
    bad.mkdir()
    for i in range(1, 6):
        (bad / f"data_batch_{i}").write_bytes(b"not a pickle")
    with pytest.raises(PruneDataError, match="not a readable CIFAR batch"):
        load_dataset("cifar10", root=str(tmp_path))
    assert main(["prune", "imagenet-21k", "-o", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err  # one line, no traceback
    for accepted in ("fashion-mnist", "cifar10", "svhn", "ImageFolder", "module:callable"):
        assert accepted in err


def test_cli_on_a_cifar10_folder_end_to_end(tmp_path, capsys):
    make_cifar(tmp_path / "data")
    sel_path, root = tmp_path / "sel.json", str(tmp_path / "data")
    assert main(["prune", "cifar10", "--root", root, "--method", "adapruner", "--keep-ratio", "0.5", "--epochs", "2",
                 "--batch-size", "16", "--no-progress", "-o", str(sel_path)]) == 0
    sel = Selection.load(sel_path)
    assert sel.dataset_size == N_TRAIN and sel.params["dataset"] == "cifar10"
    assert sel.params["dataset_root"] == str(Path(root).resolve())
    assert sel.params["proxy"]["in_channels"] == 3 and sel.params["proxy"]["side"] == 32
    capsys.readouterr()
    # show and train find the data through the selection file (no --root)
    assert main(["show", str(sel_path), "--dataset", "cifar10"]) == 0
    assert "dog" in capsys.readouterr().out
    out = tmp_path / "train.json"
    assert main(["train", "cifar10", "--selection", str(sel_path), "--epochs", "10", "--batch-size", "16",
                 "--model", "linear", "--lr", "0.01", "--no-progress", "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["trained_on"].startswith(f"{sel.num_kept} of {N_TRAIN}") and res["test_accuracy"] > 0.2
    ev = tmp_path / "eval.json"
    assert main(["evaluate", str(sel_path), "--architectures", "mlp,cnn_bn", "--seeds", "1", "--epochs", "1",
                 "--no-progress", "-o", str(ev)]) == 0
    rep = json.loads(ev.read_text())
    assert rep["dataset"]["root"] == str(Path(root).resolve())
    assert {r["subset"] for r in rep["evaluations"][0]["runs"]} == {"selection", "random", "full"}




def test_module_callable_datasets_through_the_cli(tmp_path, monkeypatch, capsys):
    (tmp_path / "userdata.py").write_text(dataformats.USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "userdata", raising=False)
    ds = load_dataset("userdata:make")
    assert len(ds) == 96 and np.asarray(ds.targets).shape == (96,)
    assert [int(ds[i][1]) for i in range(5)] == list(np.asarray(ds.targets)[:5])
    assert len(load_dataset("userdata:make", train=False)) == 40
    # the file form, and --root handed to the callable
    spec = f"{tmp_path / 'userdata.py'}:make"
    assert len(load_dataset(spec, root=str(tmp_path / "blobs-root"))) == 96
    sel_path = tmp_path / "sel.json"
    assert main(["prune", "userdata:make", "--method", "adapruner", "--keep-ratio", "0.5", "--model", "mlp",
                 "--epochs", "2", "--batch-size", "16", "--no-progress", "-o", str(sel_path)]) == 0
    sel = Selection.load(sel_path, load_dataset("userdata:make"))
    assert abs(sel.num_kept - 48) <= 2 and sel.params["proxy"]["side"] == 8
    capsys.readouterr()
    assert main(["show", str(sel_path), "--dataset", "userdata:make"]) == 0
    out = tmp_path / "t.json"
    assert main(["train", "userdata:make", "--selection", str(sel_path), "--model", "mlp", "--epochs", "5",
                 "--batch-size", "16", "--no-progress", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["test_accuracy"] > 0.4  # 4 separable classes, chance 0.25
    assert main(["evaluate", str(sel_path), "--architectures", "mlp,linear", "--seeds", "1", "--epochs", "1",
                 "--no-progress", "-o", str(tmp_path / "e.json")]) == 0
    # a callable without `train` has no test split; errors say so in one line
    capsys.readouterr()
    assert main(["train", "userdata:no_split", "--model", "mlp", "--epochs", "1"]) == 2
    assert "takes no `train` argument" in capsys.readouterr().err
    for bad, msg in (("userdata:nope", "has no attribute"), ("no_such_mod_xyz:make", "cannot import module"),
                     (f"{tmp_path / 'missing.py'}:make", "no Python file")):
        with pytest.raises(PruneDataError, match=msg):
            load_dataset(bad)


def test_registered_dataset_names(tmp_path):
    calls = []

    def tiny(train=True):
        calls.append(train)
        return torch.utils.data.TensorDataset(torch.randn(10, 1, 4, 4), torch.arange(10) % 2)

    register_dataset("tiny-pairs", tiny)
    ds = load_dataset("Tiny_Pairs", train=False)
    assert len(ds) == 10 and calls == [False] and num_classes(ds) == 2
    with pytest.raises(PruneDataError, match="already registered"):
        register_dataset("tiny-pairs", lambda train=True: None)


def _image_tree(root: Path, split: str, classes, per_class: int, rng) -> None:
    from PIL import Image

    for k, c in enumerate(classes):
        d = root / split / c
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((12, 12, 3), 40 + 50 * k, dtype=np.uint8)
                            + rng.integers(0, 20, (12, 12, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_image_folder_test_split_matches_classes_by_name(tmp_path, capsys):
    rng = np.random.default_rng(0)
    _image_tree(tmp_path / "imgs", "train", ["ant", "bee", "cat", "dog"], 6, rng)
    _image_tree(tmp_path / "imgs", "test", ["ant", "cat", "dog"], 3, rng)  # no "bee" in test/
    train = load_dataset(str(tmp_path / "imgs"))
    test = load_dataset(str(tmp_path / "imgs"), train=False)
    assert test.classes == train.classes == ["ant", "bee", "cat", "dog"]
    by_folder = {Path(p).parent.name: y for p, y in test.samples}
    assert by_folder == {"ant": 0, "cat": 2, "dog": 3}  # not shifted to 0, 1, 2
    assert list(test.targets) == [y for _, y in test.samples]
    # a folder the training split does not know is refused
    _image_tree(tmp_path / "imgs", "test", ["eel"], 1, rng)
    with pytest.raises(PruneDataError, match=r"\['eel'\]"):
        load_dataset(str(tmp_path / "imgs"), train=False)
    with pytest.raises(PruneDataError, match="no test/ folder"):
        load_dataset(str(tmp_path / "imgs" / "train"), train=False)


def test_corrupt_image_is_one_line_naming_the_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    _image_tree(tmp_path / "imgs", "train", ["a", "b"], 4, rng)
    bad = tmp_path / "imgs" / "train" / "b" / "2.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["prune", str(tmp_path / "imgs"), "--method", "adapruner", "--epochs", "2", "--model", "linear",
                 "--batch-size", "4", "--no-progress", "-o", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "remove or replace" in err and "Traceback" not in err
    # -v keeps the traceback for debugging
    assert main(["-v", "prune", str(tmp_path / "imgs"), "--method", "adapruner", "--epochs", "2", "--model", "linear",
                 "--batch-size", "4", "--no-progress", "-o", str(tmp_path / "s.json")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_train_reapplies_the_selections_max_samples(tmp_path, capsys):
    sel_path = tmp_path / "sel.json"
    assert main(["prune", "fashion-mnist", "--method", "random", "--keep-ratio", "0.5", "--max-samples", "300",
                 "-o", str(sel_path)]) == 0
    out = tmp_path / "t.json"
    # no --max-samples here: the selection's 300 is used, so the selection matches the data
    assert main(["train", "fashion-mnist", "--selection", str(sel_path), "--epochs", "1", "--model", "linear",
                 "--max-test-samples", "200", "--no-progress", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["trained_on"].startswith("150 of 300")
