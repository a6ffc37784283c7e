"""prunedata.evaluate / plots / `prunedata evaluate`: every path end to end on tiny real Fashion-MNIST."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from prunedata import evaluate as ev
from prunedata import plots
from prunedata.cli import main
from prunedata.datasets import FashionMNIST, PrunedDataset
from prunedata.errors import PruneDataError, SelectionMismatchError
from prunedata.methods.registry import MethodConfig, select
from prunedata.search_space import ConvNetSpec, build_architecture, search_space
from prunedata.selection import Selection

N_TRAIN, N_TEST = 300, 200
PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def data():
    return FashionMNIST(train=True, max_samples=N_TRAIN), FashionMNIST(train=False, max_samples=N_TEST)


@pytest.fixture(scope="module")
def ada_sel(data):
    train, _ = data
    sel = select("adapruner", train, 0.5, config=MethodConfig(epochs=2, batch_size=64, show_progress=False))
    sel.params.update(dataset="fashion-mnist", max_samples=N_TRAIN)
    return sel


def _is_png(path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == PNG


def test_random_subset_is_class_balanced_and_seeded(data):
    labels = data[0].targets.numpy()
    a = ev.random_subset(labels, 100, seed=3)
    assert a.size == 100 and np.unique(a).size == 100
    assert np.all(np.bincount(labels[a], minlength=10) == 10)
    assert np.array_equal(a, ev.random_subset(labels, 100, seed=3))
    assert not np.array_equal(a, ev.random_subset(labels, 100, seed=4))


def test_evaluate_selection_end_to_end(data, ada_sel, tmp_path):
    train, test = data
    res = ev.evaluate_selection(ada_sel, train, test, architectures=["mlp", "linear"], seeds=2, epochs=1,
                                batch_size=64, show_progress=False)
    assert res.proxy_architecture == "cnn"
    assert set(res.summary) == {"mlp", "linear"} and all(s["unseen"] for s in res.summary.values())
    assert len(res.runs) == 2 * 3 * 2
    for r in res.runs:
        want = {"selection": ada_sel.num_kept, "random": ada_sel.num_kept, "full": N_TRAIN}[r["subset"]]
        assert r["n_train"] == want and 0.0 <= r["accuracy"] <= 1.0 and r["seconds"] > 0
    accs = [r["accuracy"] for r in res.runs]
    assert len(set(accs)) > 3, "accuracies must come from real training, not constants"
    assert max(accs) > 0.3  # well above chance (0.1) after one epoch on real data
    s = res.summary["mlp"]
    assert s["diff_vs_random"] == pytest.approx(s["selection"]["mean"] - s["random"]["mean"])
    assert s["beats_random"] == (s["diff_vs_random"] > 0)
    assert s["selection"]["mean"] == pytest.approx(np.mean(s["selection"]["accuracies"]))
    table = res.table()
    assert "mlp" in table and "beats" in table
    path = res.save(tmp_path / "r.json")
    d = json.loads(path.read_text())
    assert d["num_kept"] == ada_sel.num_kept and d["summary"]["linear"]["unseen"] is True
    assert _is_png(res.plot(tmp_path / "r.png"))


def test_evaluation_cache_shares_random_and_full_runs(data):
    train, test = data
    sel = Selection.from_mask(np.arange(N_TRAIN) % 3 == 0, method="every-third", fingerprint=None)
    cache: dict = {}
    kw = dict(architectures=["linear"], seeds=1, epochs=1, show_progress=False, cache=cache)
    a = ev.evaluate_selection(sel, train, test, **kw)
    b = ev.evaluate_selection(sel, train, test, **kw)
    assert not any(r.get("cached") for r in a.runs)
    assert [r["subset"] for r in b.runs if r.get("cached")] == ["random", "full"]
    assert a.summary["linear"]["full"]["mean"] == b.summary["linear"]["full"]["mean"]
    assert a.summary["linear"]["unseen"]  # no proxy architecture recorded -> every architecture is unseen


def test_without_random_and_full_data_results_reused(data):
    train, test = data
    sel = Selection.from_mask(np.arange(N_TRAIN) % 3 == 0, method="every-third", fingerprint=None)
    res = ev.evaluate_selection(sel, train, test, architectures=["linear"], seeds=1, epochs=1, include_random=False,
                                include_full=False, show_progress=False)
    assert [r["subset"] for r in res.runs] == ["selection"]
    assert np.isnan(res.summary["linear"]["diff_vs_random"]) and not res.summary["linear"]["beats_random"]
    # proxy_search(full_accuracy=...) takes an earlier search's full-data results instead of training again
    proxies = {"thirds": np.flatnonzero(np.arange(N_TRAIN) % 3 == 0)}
    known = {s.name: (0.5 + i / 100, 7.0) for i, s in enumerate(search_space("tiny"))}
    res = ev.proxy_search(proxies, train, test, space="tiny", proxy_epochs=1, add_random=False,
                          full_accuracy=known, show_progress=False)
    assert res.full_accuracy == [known[a][0] for a in res.architectures]
    assert res.full_seconds == pytest.approx(7.0 * len(known))


def test_disk_cache_reuses_runs_across_evaluations_and_keys_by_samples(data, tmp_path):
    train, test = data
    kw = dict(architectures=["linear"], seeds=1, epochs=1, show_progress=False, cache_dir=tmp_path / "runs")
    sel = Selection.from_mask(np.arange(N_TRAIN) % 3 == 0, method="every-third", fingerprint=None)
    a = ev.evaluate_selection(sel, train, test, **kw)
    assert not any(r.get("cached") for r in a.runs)
    assert len(list((tmp_path / "runs").glob("*.json"))) == 3
    b = ev.evaluate_selection(sel, train, test, **kw)  # a new process would see the same files
    assert all(r.get("cached") for r in b.runs)
    assert [r["accuracy"] for r in a.runs] == [r["accuracy"] for r in b.runs]
    # another selection of the same size shares random and full, but its own samples are trained
    other = Selection.from_mask(np.arange(N_TRAIN) % 3 == 1, method="every-third-1", fingerprint=None)
    c = ev.evaluate_selection(other, train, test, **kw)
    assert {r["subset"]: bool(r.get("cached")) for r in c.runs} == {"selection": False, "random": True, "full": True}
    # another recipe trains again
    d = ev.evaluate_selection(sel, train, test, **dict(kw, epochs=2))
    assert not any(r.get("cached") for r in d.runs)


def test_search_space():
    assert len(search_space("paper")) == 720
    assert len(search_space("cpu")) >= 24
    names = [s.name for s in search_space("cpu")]
    assert len(set(names)) == len(names)
    spec = ConvNetSpec.from_name("convnet-d2-w8-leakyrelu-group-avg")
    net = build_architecture(spec.name)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    for s in search_space("paper")[::97]:
        assert s.build()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_proxy_search_spearman_from_real_training(data, tmp_path):
    train, test = data
    proxies, skipped = ev.make_proxies(["herding", "no-such-method"], train, per_class=5,
                                       config=MethodConfig(epochs=1, show_progress=False))
    assert "no-such-method" in skipped and "not registered" in skipped["no-such-method"]
    assert proxies["herding"].num_kept == 50
    res = ev.proxy_search(proxies, train, test, space="tiny", proxy_epochs=2, full_epochs=1, show_progress=False)
    assert list(res.proxy_accuracy) == ["random", "herding"] and res.proxy_sizes["random"] == 50
    full = np.asarray(res.full_accuracy)
    assert full.size == 4 and np.unique(full).size > 1
    for p, acc in res.proxy_accuracy.items():
        assert res.spearman[p] == pytest.approx(spearmanr(acc, full).statistic, nan_ok=True)
        best = int(np.argmax(acc))
        assert res.picked[p] == res.architectures[best]
        assert res.picked_full_accuracy[p] == pytest.approx(full[best])
        assert res.time_ratio[p] == pytest.approx(res.proxy_seconds[p] / res.full_seconds)
    assert "spearman" in res.table()
    assert json.loads(res.to_json())["best_full_accuracy"] == pytest.approx(full.max())
    assert _is_png(res.plot(tmp_path / "p.png"))


def test_time_to_accuracy_curves(data, ada_sel, tmp_path):
    train, test = data
    res = ev.time_to_accuracy({"full": train, "adapruner": PrunedDataset(train, ada_sel)}, test,
                              architecture="mlp", epochs=2, evals_per_epoch=2, batch_size=64, show_progress=False)
    for name in ("full", "adapruner"):
        c = res.curves[name]
        assert len(c) == 4
        assert all(b[0] > a[0] for a, b in zip(c, c[1:]))
    assert res.sizes == {"full": N_TRAIN, "adapruner": ada_sel.num_kept}
    assert res.time_to_target["full"] is not None  # the reference reaches 98% of its own final accuracy
    assert _is_png(res.plot(tmp_path / "t.png"))


def test_transfer_to_digits_and_to_other_classes(data, ada_sel):
    train, test = data
    dtr, dte = ev.digits_task()
    assert dtr[0][0].shape == (1, 28, 28) and len(dtr) + len(dte) == 1797
    res = ev.transfer(ev.transfer_sets(ada_sel, train), dtr, dte, architecture="mlp", source_test=test,
                      pretrain_epochs=1, finetune_epochs=2, seeds=1, batch_size=64, show_progress=False)
    assert set(res.accuracy) == {"adapruner", "random", "full", "scratch"}
    assert res.sizes["adapruner"] == res.sizes["random"] == ada_sel.num_kept and res.sizes["full"] == N_TRAIN
    assert res.accuracy["full"]["mean"] > 0.2  # 10-class digits, well above chance
    sets = ev.transfer_sets(ada_sel, train, source_classes=[0, 1, 2, 3, 4])
    for d in sets.values():
        assert set(np.unique(d.targets.numpy())) <= set(range(5))
    tgt = ev.class_split(train, [5, 6, 7, 8, 9], per_class=10)
    assert len(tgt) == 50 and set(tgt.targets.tolist()) == set(range(5))
    res2 = ev.transfer(sets, tgt, ev.class_split(test, [5, 6, 7, 8, 9]), architecture="linear", pretrain_epochs=1,
                       finetune_epochs=1, seeds=1, include_scratch=False, show_progress=False)
    assert set(res2.accuracy) == {"adapruner", "random", "full"} and "adapruner" in res2.table()


def test_pictures(data, ada_sel, tmp_path):
    train, _ = data
    model = build_architecture("mlp")
    feats = plots.penultimate_features(model, train)
    assert feats.shape == (N_TRAIN, 128)
    labels = train.targets.numpy()
    assert _is_png(plots.plot_embedding(tmp_path / "e.png", feats, labels, ada_sel.mask, method="pca"))
    assert _is_png(plots.plot_embedding(tmp_path / "t.png", feats, labels, ada_sel.mask, method="tsne", max_points=120))
    assert _is_png(plots.plot_class_counts(tmp_path / "c.png", ada_sel, labels, class_names=train.classes))
    assert _is_png(plots.plot_mask_histogram(tmp_path / "h.png", ada_sel))
    assert _is_png(plots.plot_accuracy_vs_keep_ratio(tmp_path / "a.png", [
        {"method": "x", "keep_ratio": 0.3, "mean": 0.7, "std": 0.01}, {"method": "x", "keep_ratio": 0.6, "mean": 0.8}]))
    rnd = Selection.from_mask(np.arange(N_TRAIN) % 2 == 0, method="random")
    with pytest.raises(PruneDataError, match="needs a selection made by AdaPruner"):
        plots.plot_mask_histogram(tmp_path / "x.png", rnd)


def test_cli_evaluate_every_mode(data, ada_sel, tmp_path, capsys):
    path = ada_sel.save(tmp_path / "ada.json")
    out = tmp_path / "rep.json"
    rc = main(["evaluate", str(path), "--architectures-eval", "--architectures", "mlp,linear", "--seeds", "1",
               "--epochs", "1", "--max-test-samples", "200", "--proxy-search", "--space", "tiny", "--proxy-epochs", "1",
               "--full-epochs", "1", "--time-curves", "--transfer", "fmnist-split", "--finetune-epochs", "1",
               "--finetune-per-class", "5", "--plots", "--model", "mlp", "--no-progress", "-o", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "beats" in printed and "spearman" in printed and "training time" in printed and "transfer" in printed
    rep = json.loads(out.read_text())
    assert rep["dataset"] == {"name": "fashion-mnist", "max_samples": N_TRAIN}
    assert set(rep["evaluations"][0]["summary"]) == {"mlp", "linear"}
    assert set(rep["proxy_search"]["spearman"]) == {"adapruner", "random"}
    assert rep["transfer"][0]["sizes"]["full"] == N_TRAIN // 2
    names = {p.rsplit(".", 2)[-2] for p in rep["pngs"]}
    assert {"eval", "proxy", "time", "transfer-adapruner", "embedding-adapruner", "class-counts-adapruner",
            "mask-hist-adapruner"} <= names
    assert all(_is_png(p) for p in rep["pngs"])


# --------------------------------------------------------------------------- bad input
def test_selection_for_another_dataset_is_refused(data, ada_sel, tmp_path, capsys):
    train, test = data
    other = FashionMNIST(train=True, max_samples=N_TRAIN + 100)
    with pytest.raises(SelectionMismatchError, match=f"made for a dataset of {N_TRAIN} samples"):
        ev.evaluate_selection(ada_sel, other, test, architectures=["linear"], seeds=1, epochs=1)
    path = ada_sel.save(tmp_path / "ada.json")
    rc = main(["evaluate", str(path), "--max-samples", str(N_TRAIN + 100), "--architectures", "linear",
               "--seeds", "1", "--epochs", "1", "--no-progress", "-o", str(tmp_path / "r.json")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "made for a dataset of 300 samples" in err and "max_samples=400" in err


def test_unknown_architecture_is_refused(data, ada_sel, tmp_path, capsys):
    train, test = data
    with pytest.raises(PruneDataError, match="unknown architecture 'resnet9000'.*cnn_bn"):
        ev.evaluate_selection(ada_sel, train, test, architectures=["mlp", "resnet9000"], seeds=1, epochs=1)
    with pytest.raises(PruneDataError, match="not a ConvNet name"):
        build_architecture("convnet-deep")
    with pytest.raises(PruneDataError, match="unknown ConvNet norm 'weird'"):
        ConvNetSpec.from_name("convnet-d2-w8-relu-weird-max")
    path = ada_sel.save(tmp_path / "ada.json")
    assert main(["evaluate", str(path), "--architectures", "mlp,resnet9000", "--no-progress"]) == 2
    assert "unknown architecture 'resnet9000'" in capsys.readouterr().err
    with pytest.raises(PruneDataError, match="unknown search space 'huge'"):
        search_space("huge")


def test_proxy_too_small_to_hold_every_class(data):
    train, test = data
    with pytest.raises(PruneDataError, match="cannot hold every class"):
        ev.make_proxies(["random"], train, per_class=0)
    with pytest.raises(PruneDataError, match="more than the smallest class has"):
        ev.make_proxies(["random"], train, per_class=31)
    labels = train.targets.numpy()
    tiny = np.flatnonzero(labels < 5)[:20]  # only classes 0..4
    with pytest.raises(PruneDataError, match=r"holds no sample of class\(es\) \[5, 6, 7, 8, 9\]"):
        ev.proxy_search({"tiny": tiny}, train, test, space="tiny", proxy_epochs=1, full_epochs=1)
