"""Score-based baselines (random, herding, forgetting, el2n, grand) on a real Fashion-MNIST subset."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prunedata import PruneDataError, Selection
from prunedata.cli import main
from prunedata.datasets import FashionMNIST
from prunedata.identity import dataset_fingerprint
from prunedata.methods import scoring
from prunedata.methods.baselines import score_samples, select_by_scores
from prunedata.methods.registry import MethodConfig, available_methods, select

BASELINES = ["random", "herding", "forgetting", "el2n", "grand"]


@pytest.fixture(scope="module")
def ds():
    return FashionMNIST(train=True, max_samples=1000)  # 100 per class


@pytest.fixture(scope="module")
def cfg():
    return MethodConfig(model="cnn", epochs=1, batch_size=128, lr=0.05, seed=3, show_progress=False)


def _replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_registered():
    names = available_methods()
    for m in BASELINES:
        assert m in names and names[m]


@pytest.mark.parametrize("method", BASELINES)
def test_exact_counts_and_class_balance(ds, cfg, method):
    labels = ds.targets.numpy()
    sel = select(method, ds, 0.3, config=cfg)
    assert isinstance(sel, Selection) and sel.method == method
    assert sel.num_kept == 300 and sel.dataset_size == 1000
    assert sel.fingerprint == dataset_fingerprint(ds)
    if method != "random":
        assert sel.scores is not None and sel.scores.shape == (1000,) and sel.score_name
        # the kept samples are exactly the highest-scoring ones
        assert sel.scores[sel.kept].min() >= sel.scores[sel.pruned].max()
    # class balance: 0.345 * 100 per class is 34.5 -> every class keeps 34 or 35, 345 in total
    bal = select(method, ds, 0.345, config=_replace(cfg, class_balanced=True))
    assert bal.num_kept == 345 and bal.params["class_balanced"] is True
    per_class = np.bincount(labels[bal.kept], minlength=10)
    assert set(per_class.tolist()) <= {34, 35}, per_class
    # the selection file round-trips against the dataset
    assert Selection.from_dict(json.loads(bal.to_json())).num_kept == 345


def test_unbalanced_selection_can_be_unbalanced(ds, cfg):
    # without class balance EL2N keeps hard classes (shirts) more than easy ones (trousers)
    sel = select("el2n", ds, 0.3, config=cfg)
    per_class = np.bincount(ds.targets.numpy()[sel.kept], minlength=10)
    assert per_class.max() - per_class.min() > 10


def test_determinism_with_seed(ds, cfg):
    a = select("el2n", ds, 0.5, config=cfg)
    b = select("el2n", ds, 0.5, config=cfg)
    assert np.array_equal(a.kept, b.kept) and np.allclose(a.scores, b.scores)
    r1 = select("random", ds, 0.5, config=cfg)
    r2 = select("random", ds, 0.5, config=cfg)
    r3 = select("random", ds, 0.5, config=_replace(cfg, seed=4))
    assert np.array_equal(r1.kept, r2.kept) and not np.array_equal(r1.kept, r3.kept)


def test_el2n_scores_are_the_proxy_error_norm(ds, cfg):
    """EL2N with one checkpoint equals ||softmax - onehot|| of an identically trained proxy."""
    sel = select("el2n", ds, 0.4, config=cfg, checkpoints=[1])
    model = cfg.make_model()
    scoring.train_proxy(model, ds, epochs=1, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, show_progress=False)
    model.eval()
    x, y = ds.tensors()
    with torch.no_grad():
        p = torch.softmax(model(x).double(), 1).numpy()
    onehot = np.eye(10)[y.numpy()]
    expected = np.linalg.norm(p - onehot, axis=1)
    np.testing.assert_allclose(sel.scores, expected, rtol=1e-5, atol=1e-6)
    # kept (hard) samples are misclassified far more often than pruned (easy) ones
    wrong = p.argmax(1) != y.numpy()
    assert wrong[sel.kept].mean() > wrong[sel.pruned].mean() + 0.1
    easy = select("el2n", ds, 0.4, config=cfg, checkpoints=[1], keep="easy")
    assert wrong[easy.kept].mean() < wrong[easy.pruned].mean()


def test_grand_closed_form_matches_autograd(ds):
    torch.manual_seed(0)
    from prunedata.models import make_model

    net = make_model("cnn").eval()
    sub = torch.utils.data.Subset(ds, list(range(12)))
    last = scoring.grand_scores(net, sub, params="last")
    x, y = ds.tensors()
    ref_last, ref_all = [], []
    params = list(net.parameters())
    for i in range(12):
        loss = F.cross_entropy(net(x[i:i + 1]), y[i:i + 1])
        g = torch.autograd.grad(loss, params)
        ref_all.append(float(torch.sqrt(sum(t.pow(2).sum() for t in g))))
        gw, gb = torch.autograd.grad(F.cross_entropy(net(x[i:i + 1]), y[i:i + 1]), [net.fc.weight, net.fc.bias])
        ref_last.append(float(torch.sqrt(gw.pow(2).sum() + gb.pow(2).sum())))
    np.testing.assert_allclose(last, ref_last, rtol=1e-4)
    loop = scoring.grand_all_params(net, sub, impl="loop")
    vm = scoring.grand_all_params(net, sub, impl="vmap", chunk_size=4)
    np.testing.assert_allclose(loop, ref_all, rtol=1e-4)
    np.testing.assert_allclose(vm, ref_all, rtol=1e-4)
    assert np.all(np.asarray(ref_all) > np.asarray(ref_last))  # more parameters, larger norm


def test_grand_all_params_option(ds, cfg):
    sub = torch.utils.data.Subset(ds, list(range(0, 1000, 5)))  # 200 samples, labels via Subset
    sel = select("grand", sub, 0.5, config=_replace(cfg, model="linear"), params="all")
    ref = select("grand", sub, 0.5, config=_replace(cfg, model="linear"), params="last")
    # for a linear model the last layer is every parameter
    np.testing.assert_allclose(sel.scores, ref.scores, rtol=1e-5)
    assert sel.params["params"] == "all"


def test_forgetting_tracker_crafted_case():
    t = scoring.ForgettingTracker(5)
    # presentations arrive in shuffled order with their ids; per sample the outcome sequences are
    # 0: 1,0,1,0 -> 2 events   1: 1,1,1,1 -> 0   2: never correct   3: 0,1,0,1 -> 1   4: 0,0,1,1 -> 0
    seqs = {0: [1, 0, 1, 0], 1: [1, 1, 1, 1], 2: [0, 0, 0, 0], 3: [0, 1, 0, 1], 4: [0, 0, 1, 1]}
    rng = np.random.default_rng(0)
    for epoch in range(4):
        ids = rng.permutation(5)
        for half in (ids[:2], ids[2:]):
            t.update(torch.as_tensor(half), torch.as_tensor([bool(seqs[int(i)][epoch]) for i in half]))
    s = t.scores()
    assert s[[0, 1, 3, 4]].tolist() == [2, 0, 1, 0]
    assert s[2] > s.max(initial=0, where=np.arange(5) != 2) and t.never_learned == 1
    assert t.scores(never_learned_score=99)[2] == 99
    with pytest.raises(PruneDataError, match="same sample id twice"):
        t.update([1, 1], [True, False])
    with pytest.raises(PruneDataError, match=r"ids must lie in \[0, 5\)"):
        t.update([7], [True])


def test_forgetting_on_real_training(ds, cfg):
    sel = select("forgetting", ds, 0.5, config=_replace(cfg, epochs=3))
    s = sel.scores
    never = sel.metrics["never_learned"]
    # at most floor(3/2)=1 forgetting event in 3 presentations; never-learned samples rank above all
    assert set(np.unique(s).tolist()) <= {0.0, 1.0, 3.0}
    assert int((s == 3.0).sum()) == never
    assert sel.metrics["unforgettable"] == int((s == 0).sum())
    if never <= 500:
        assert np.all(np.isin(np.flatnonzero(s == 3.0), sel.kept))


def test_herding_prefix_tracks_the_mean():
    torch.manual_seed(0)
    x = torch.randn(600, 8) * torch.linspace(0.5, 3, 8)
    order = scoring.herding_order(x, k=30)
    mu = x.mean(0)
    herd_err = float((x[order].mean(0) - mu).norm())
    rand_err = np.mean([float((x[torch.randperm(600)[:30]].mean(0) - mu).norm()) for _ in range(20)])
    assert len(set(order.tolist())) == 30
    assert herd_err < 0.2 * rand_err
    # the first pick is the sample closest to the mean
    assert order[0] == int(torch.argmin((x - mu).norm(dim=1)))


def test_herding_class_balanced_is_per_class(ds, cfg):
    sc = score_samples("herding", ds, config=_replace(cfg, class_balanced=True))
    assert sc.per_class
    for c in range(10):  # per-class priorities 1, 1-1/100, ... within every class
        np.testing.assert_allclose(np.sort(sc.scores[sc.labels == c])[::-1], 1 - np.arange(100) / 100)
    with pytest.raises(PruneDataError, match="computed per class"):
        select_by_scores(sc, ds, 0.5, class_balanced=False)
    sel = select_by_scores(sc, ds, 0.5, config=_replace(cfg, class_balanced=True))
    assert np.bincount(ds.targets.numpy()[sel.kept]).tolist() == [50] * 10


def test_keep_top_k_helper():
    s = np.zeros(100)
    k1 = scoring.keep_top_k(s, 0.2, seed=0)
    k2 = scoring.keep_top_k(s, 0.2, seed=1)
    assert k1.size == 20 and not np.array_equal(k1, np.arange(20)) and not np.array_equal(k1, k2)
    s = np.arange(100.0)
    assert scoring.keep_top_k(s, 0.1).tolist() == list(range(90, 100))
    assert scoring.keep_top_k(s, 0.1, largest=False).tolist() == list(range(10))
    labels = np.r_[np.zeros(70, int), np.ones(30, int)]
    kept = scoring.keep_top_k(s, 0.5, labels=labels, class_balanced=True)
    assert kept.size == 50 and np.bincount(labels[kept]).tolist() == [35, 15]
    assert scoring.apportion([3, 3, 3], 4).sum() == 4
    with pytest.raises(PruneDataError, match="NaN or infinite"):
        scoring.keep_top_k(np.array([1.0, np.nan]), 0.5)
    with pytest.raises(PruneDataError, match="needs the label"):
        scoring.keep_top_k(s, 0.5, class_balanced=True)


def test_cli_prune_el2n(ds, tmp_path, capsys):
    out = tmp_path / "el2n.json"
    rc = main(["prune", "fashion-mnist", "--method", "el2n", "--max-samples", "1000", "--epochs", "1",
               "--no-progress", "-o", str(out)])
    assert rc == 0 and out.exists()
    sel = Selection.load(out, ds)
    assert sel.method == "el2n" and sel.num_kept == 700 and sel.score_name == "el2n"
    assert "class balance" in capsys.readouterr().out
    out2 = tmp_path / "rand.json"
    rc = main(["prune", "fashion-mnist", "--method", "random", "--max-samples", "1000", "--keep-ratio", "0.25",
               "--class-balanced", "--no-progress", "-o", str(out2)])
    sel2 = Selection.load(out2, ds)
    assert rc == 0 and np.bincount(ds.targets.numpy()[sel2.kept]).tolist() == [25] * 10


def test_bad_inputs(ds, cfg, capsys, tmp_path):
    with pytest.raises(PruneDataError, match="strictly between 0 and 1"):
        select("el2n", ds, 0, config=cfg)
    with pytest.raises(PruneDataError, match="Did you mean 0.7"):
        select("random", ds, 70, config=cfg)
    with pytest.raises(PruneDataError, match="unknown selection method 'el2m'.*el2n"):
        select("el2m", ds, 0.5, config=cfg)
    with pytest.raises(PruneDataError, match="has no option.*runz.*runs"):
        select("el2n", ds, 0.5, config=cfg, runz=2)
    with pytest.raises(PruneDataError, match="keep must be 'hard'"):
        select("forgetting", ds, 0.5, config=cfg, keep="medium")
    with pytest.raises(PruneDataError, match="runs .* integer >= 1"):
        select("el2n", ds, 0.5, config=cfg, runs=0)
    with pytest.raises(PruneDataError, match="checkpoints must be epochs between 1 and"):
        select("el2n", ds, 0.5, config=cfg, checkpoints=[5])
    with pytest.raises(PruneDataError, match="grand params must be 'last'"):
        select("grand", ds, 0.5, config=cfg, params="some")
    with pytest.raises(PruneDataError, match="cannot prune a dataset of 1"):
        select("random", torch.utils.data.Subset(ds, [0]), 0.5, config=cfg)
    rc = main(["prune", "fashion-mnist", "--method", "nope", "--max-samples", "200", "-o", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown selection method 'nope'" in err and "el2n" in err
    rc = main(["prune", "fashion-mnist", "--method", "random", "--keep-ratio", "70", "--max-samples", "200",
               "-o", str(tmp_path / "y.json")])
    assert rc == 2 and "Did you mean 0.7" in capsys.readouterr().err


def test_score_once_select_many(ds, cfg):
    """Scores do not depend on the ratio: one scoring serves every keep ratio, balanced or not."""
    sc = score_samples("random", ds, config=cfg)
    a = select_by_scores(sc, ds, 0.3, config=cfg)
    b = select_by_scores(sc, ds, 0.6, config=cfg)
    assert a.num_kept == 300 and b.num_kept == 600 and np.all(np.isin(a.kept, b.kept))
    bal = select_by_scores(sc, ds, 0.3, config=cfg, class_balanced=True)
    assert np.bincount(ds.targets.numpy()[bal.kept]).tolist() == [30] * 10
    with pytest.raises(PruneDataError, match="not a score-based baseline"):
        score_samples("adapruner", ds, config=cfg)


def test_proxy_checkpoint_resume_restores_model_and_scorer_state(ds, tmp_path):
    # forgetting counts come from every batch of every epoch: an interrupted proxy resumed from its
    # checkpoint must end with the same weights and the same counts as an uninterrupted one
    from prunedata.models import make_model

    def run(**kw):
        torch.manual_seed(0)
        model = make_model("mlp")
        tracker = scoring.ForgettingTracker(len(ds))
        scoring.train_proxy(model, ds, epochs=3, batch_size=100, seed=4, show_progress=False,
                            on_batch=lambda ids, logits, y: tracker.update(ids, logits.argmax(1) == y),
                            state=tracker.state_dict, load_state=tracker.load_state_dict, **kw)
        return model, tracker

    m_whole, t_whole = run()
    ck = tmp_path / "forgetting.pt"
    run(checkpoint=ck, stop_after_epoch=2)
    m_res, t_res = run(checkpoint=ck, resume=True)
    for a, b in zip(m_whole.state_dict().values(), m_res.state_dict().values()):
        assert torch.equal(a, b)
    assert np.array_equal(t_whole.forgets, t_res.forgets) and t_whole.presentations.max() == 3
    assert np.array_equal(t_whole.presentations, t_res.presentations)
    with pytest.raises(PruneDataError, match="another proxy"):
        scoring.train_proxy(make_model("mlp"), ds, epochs=2, batch_size=100, seed=4, show_progress=False,
                            checkpoint=ck, resume=True)


def test_el2n_runs_checkpointed_and_reused(ds, cfg, tmp_path, caplog):
    # two proxy runs, one checkpoint file each; resuming finished runs trains nothing and gives the
    # same averaged scores
    ck = tmp_path / "el2n.pt"
    first = score_samples("el2n", ds, config=cfg, runs=2, checkpoint=str(ck))
    assert (tmp_path / "el2n.run0.pt").exists() and (tmp_path / "el2n.run1.pt").exists()
    with caplog.at_level("INFO", logger="prunedata.methods.scoring"):
        again = score_samples("el2n", ds, config=cfg, runs=2, checkpoint=str(ck), resume=True)
    resumed = [r.getMessage() for r in caplog.records if "resumed" in r.getMessage()]
    assert len(resumed) == 2 and all(f"at epoch {cfg.epochs} of {cfg.epochs}" in m for m in resumed)
    assert np.array_equal(first.scores, again.scores)
