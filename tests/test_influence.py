"""Influence of samples on the last linear layer: closed forms against autograd, solves against each
other, the first-order prediction against real retraining, and the registered method end to end."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunedata.datasets import FashionMNIST
from prunedata.errors import PruneDataError
from prunedata.methods.influence import (ExactSolver, KFACSolver, accumulate_hessian, accumulate_kfac, cg_solve,
                                         collect_features, compute_influence, finalize_hessian, find_linear_layer,
                                         head_params, hvp, influence_matrix, per_sample_grads)
from prunedata.methods.registry import MethodConfig, select
from prunedata.selection import Selection


def _head(F_=5, C=4, seed=0, bias=True):
    torch.manual_seed(seed)
    lin = nn.Linear(F_, C, bias=bias).double()
    h = torch.randn(60, F_, dtype=torch.float64) * 1.5
    y = torch.randint(0, C, (60,))
    return lin, h, y


@pytest.mark.parametrize("bias", [True, False])
def test_closed_form_grads_match_autograd(bias):
    lin, h, y = _head(bias=bias)
    W, b = head_params(lin)
    G = per_sample_grads(h, y, W, b)
    for i in range(0, 60, 7):
        lin.zero_grad()
        F.cross_entropy(lin(h[i:i + 1]), y[i:i + 1]).backward()
        ref = lin.weight.grad if not bias else torch.cat([lin.weight.grad, lin.bias.grad[:, None]], 1)
        torch.testing.assert_close(G[i], ref.flatten(), rtol=1e-10, atol=1e-12)


def test_exact_hessian_matches_autograd_and_sums_over_batches():
    lin, h, y = _head()
    W, b = head_params(lin)
    C, D = 4, 6

    def loss(theta):
        T = theta.reshape(C, D)
        return F.cross_entropy(h @ T[:, :-1].T + T[:, -1], y)

    theta = torch.cat([W, b[:, None]], 1).flatten()
    ref = torch.autograd.functional.hessian(loss, theta)
    hs = accumulate_hessian(h[:25], W, b)          # two "ranks" / batches, then summed
    hs2 = accumulate_hessian(h[25:], W, b)
    total = hs + hs2
    assert total.count == 60
    H = finalize_hessian(total, damping=1e-3)
    torch.testing.assert_close(H - 1e-3 * torch.eye(C * D, dtype=H.dtype), ref, rtol=1e-7, atol=1e-8)
    # the undamped Hessian is singular (softmax shift invariance): the damping is what makes it solvable
    assert torch.linalg.matrix_rank(ref) < C * D


def test_solvers_agree_cg_exact_and_kfac_is_an_approximation():
    lin, h, y = _head(F_=8, C=5, seed=1)
    W, b = head_params(lin)
    damp = 1e-2
    H = finalize_hessian(accumulate_hessian(h, W, b), damp)
    G = per_sample_grads(h, y, W, b)
    exact = ExactSolver(H).solve(G)
    torch.testing.assert_close(exact @ H, G, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(hvp(G[:3], h, W, b, damp), G[:3] @ H, rtol=1e-10, atol=1e-12)
    cg, info = cg_solve(G[:4], h, W, b, damp, tol=1e-12)
    torch.testing.assert_close(cg, exact[:4], rtol=1e-7, atol=1e-9)
    kf = KFACSolver(accumulate_kfac(h, W, b), damp, h=h, W=W, b=b)
    pcg, _ = cg_solve(G[:4], h, W, b, damp, tol=1e-12, preconditioner=kf)
    torch.testing.assert_close(pcg, exact[:4], rtol=1e-7, atol=1e-9)
    approx = kf.solve(G)
    cos = F.cosine_similarity(approx, exact, dim=1)
    assert float(cos.mean()) > 0.8 and float((approx - exact).norm() / exact.norm()) > 1e-6


def test_influence_predicts_retrained_parameters():
    # convex head: retrain without a few samples (same regulariser, 1/n kept) and compare
    torch.manual_seed(3)
    n, F_, C, lam = 150, 4, 3, 1e-2
    h = torch.randn(n, F_, dtype=torch.float64)
    y = (h[:, 0] + 0.5 * torch.randn(n, dtype=torch.float64) > 0).long() + (h[:, 1] > 1).long()

    def train(weights):
        T = torch.zeros(C, F_ + 1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([T], lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            losses = F.cross_entropy(h @ T[:, :-1].T + T[:, -1], y, reduction="none")
            loss = (weights * losses).sum() / n + 0.5 * lam * (T * T).sum()
            loss.backward()
            return loss
        opt.step(closure)
        return T.detach()

    T = train(torch.ones(n, dtype=torch.float64))
    W, b = T[:, :-1].contiguous(), T[:, -1].contiguous()
    H = finalize_hessian(accumulate_hessian(h, W, b), lam)
    S = influence_matrix(h, y, W, b, ExactSolver(H), n_total=n, out_dtype=torch.float64, show_progress=False)
    removed = torch.tensor([3, 17, 42, 99, 120])
    w = torch.ones(n, dtype=torch.float64)
    w[removed] = 0
    actual = (train(w) - T).flatten()
    predicted = S[removed].sum(0)
    assert float(F.cosine_similarity(actual, predicted, dim=0)) > 0.99
    assert float((actual - predicted).norm() / actual.norm()) < 0.1


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU())
        self.head = nn.Linear(16, 10)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.head(self.body(x))


def test_find_layer_and_bad_layers():
    net = _Net()
    assert find_linear_layer(net)[0] == "head"
    assert find_linear_layer(net, "body.1")[1] is net.body[1]
    assert find_linear_layer(net, net.head)[0] == "head"
    with pytest.raises(PruneDataError, match="not nn.Linear"):
        find_linear_layer(net, "act")
    with pytest.raises(PruneDataError, match="no submodule"):
        find_linear_layer(net, "fc")
    with pytest.raises(PruneDataError, match="not a submodule"):
        find_linear_layer(net, nn.Linear(2, 2))
    with pytest.raises(PruneDataError, match="no nn.Linear"):
        find_linear_layer(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_features_pass_and_full_pipeline_on_real_data():
    ds = FashionMNIST(train=True, max_samples=200)
    net = _Net()
    feats = collect_features(net, ds, batch_size=64, show_progress=False)
    x, _ = ds.tensors()
    torch.testing.assert_close(feats.h, net.body(x))
    assert feats.y.tolist() == ds.targets.tolist() and feats.indices.tolist() == list(range(200))
    sub = collect_features(net, ds, indices=[5, 7, 11], show_progress=False)
    torch.testing.assert_close(sub.h, feats.h[[5, 7, 11]])
    with pytest.raises(PruneDataError, match="indices"):
        collect_features(net, ds, indices=[500], show_progress=False)
    with pytest.raises(PruneDataError, match="damping"):
        compute_influence(net, ds, damping=0.0, show_progress=False)

    ex = compute_influence(net, features=feats, solver="exact", show_progress=False)
    kf = compute_influence(net, features=feats, solver="kfac", show_progress=False)
    assert ex.solver_name == "exact" and kf.solver_name == "kfac" and ex.S.shape == (200, 170)
    removed = np.arange(0, 200, 3)
    exact_norm, _ = ex.exact_norm(removed)
    cg_norm, info = kf.exact_norm(removed)      # K-FAC result evaluated with the exact Hessian by CG
    assert cg_norm == pytest.approx(exact_norm, rel=1e-5)
    assert info["method"] == "cg"
    with pytest.raises(PruneDataError, match="solver"):
        compute_influence(net, features=feats, solver="lissa", show_progress=False)


@pytest.fixture(scope="module")
def small_fmnist():
    return FashionMNIST(train=True, max_samples=300)


def test_registered_method_cardinality_and_class_balance(small_fmnist, tmp_path):
    cfg = MethodConfig(model="mlp", epochs=1, batch_size=64, show_progress=False)
    sel = select("influence", small_fmnist, 0.6, config=cfg)
    assert sel.method == "influence" and sel.num_kept == 180 and sel.dataset_size == 300
    m = sel.metrics
    for key in ("achieved_norm", "lower_bound", "gap", "eps_over_n", "solver", "solve_seconds"):
        assert key in m
    assert 0 <= m["lower_bound"] <= m["achieved_norm"]
    assert m["hessian_solver"] == "exact" and m["head_params"] == 10 * 129
    # the selected removal beats random removals of the same size on the objective
    path = sel.save(tmp_path / "sel.json")
    assert Selection.load(path, small_fmnist).num_kept == 180

    cfg_b = MethodConfig(model="mlp", epochs=1, batch_size=64, show_progress=False, class_balanced=True)
    selb = select("influence", small_fmnist, 0.5, config=cfg_b)
    counts = np.bincount(small_fmnist.targets.numpy()[selb.kept], minlength=10)
    assert counts.tolist() == [15] * 10


def test_registered_method_eps_and_bad_options(small_fmnist):
    cfg = MethodConfig(model="mlp", epochs=1, batch_size=64, show_progress=False)
    net = cfg.make_model()
    sel = select("influence", small_fmnist, 0.2, config=cfg, eps=1e-3, model=net)
    assert sel.params["problem"] == "generalization"
    assert sel.metrics["achieved_norm"] <= 1e-3 + 1e-12
    assert sel.num_kept >= 60                     # keep_ratio is a floor with eps
    assert sel.metrics["max_removed_bound"] >= sel.num_pruned
    with pytest.raises(PruneDataError, match="eps"):
        select("influence", small_fmnist, 0.5, config=cfg, eps=-1.0, model=net)
    with pytest.raises(PruneDataError, match="not nn.Linear"):
        select("influence", small_fmnist, 0.5, config=cfg, layer="features", model=net)


def test_proxy_training_checkpoints_and_resumes(small_fmnist, tmp_path, caplog):
    # an interrupted proxy resumes to the very weights of an uninterrupted run
    from prunedata.models import make_model
    from prunedata.training import fit

    def fresh():
        torch.manual_seed(0)
        return make_model("mlp")

    kw = dict(epochs=3, batch_size=64, lr=0.05, seed=5, show_progress=False)
    whole = fit(fresh(), small_fmnist, **kw)
    ck = tmp_path / "proxy.pt"
    fit(fresh(), small_fmnist, checkpoint=ck, stop_after_epoch=1, **kw)
    resumed = fit(fresh(), small_fmnist, checkpoint=ck, resume=True, **kw)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(PruneDataError, match="another training run"):
        fit(fresh(), small_fmnist, checkpoint=ck, resume=True, **{**kw, "lr": 0.1})

    # the influence method reuses a finished proxy: a second keep ratio without training again
    cfg = MethodConfig(model="mlp", epochs=1, batch_size=64, seed=2, show_progress=False)
    ck2 = tmp_path / "influence-proxy.pt"
    a = select("influence", small_fmnist, 0.6, config=cfg, checkpoint=str(ck2))
    with caplog.at_level("INFO", logger="prunedata.training"):
        b = select("influence", small_fmnist, 0.6, config=cfg, checkpoint=str(ck2), resume=True)
        c = select("influence", small_fmnist, 0.4, config=cfg, checkpoint=str(ck2), resume=True)
    assert sum("at epoch 1 of 1" in r.getMessage() for r in caplog.records) == 2
    assert np.array_equal(a.kept, b.kept)
    assert c.num_kept == 120


def test_refit_head_reaches_the_optimum_and_makes_the_gradients_cancel():
    # a briefly trained proxy's head is far from the optimum of its regularised loss; refitting it on
    # the frozen features brings the gradient to ~0, so sum_i S_i = -(H + lam I)^-1 lam theta exactly
    from prunedata.methods.influence import refit_head

    ds = FashionMNIST(train=True, max_samples=300)
    torch.manual_seed(0)
    net = _Net()
    lam = 1e-2
    feats = collect_features(net, ds, batch_size=100, show_progress=False)
    W0, b0 = head_params(net.head)
    plain = compute_influence(net, features=feats, damping=lam, show_progress=False)
    ref = compute_influence(net, features=feats, damping=lam, refit=True, show_progress=False)
    info = ref.info
    assert info["refit"] and info["grad_norm_after"] < 1e-6 < info["grad_norm_before"]
    assert plain.info == {"refit": False}
    torch.testing.assert_close(net.head.weight.detach().double(), W0)      # the model is not changed
    assert not torch.allclose(ref.W, W0)
    theta = torch.cat([ref.W, ref.b[:, None]], 1).reshape(-1)
    expected = -ref.solver.solve(lam * theta[None])[0]
    torch.testing.assert_close(ref.S.double().sum(0), expected, rtol=1e-4, atol=1e-7)
    # without the refit the rows do not sum to that (the head is not at its optimum)
    theta0 = torch.cat([W0, b0[:, None]], 1).reshape(-1)
    gap = (plain.S.double().sum(0) + plain.solver.solve(lam * theta0[None])[0]).norm()
    assert gap > 100 * (ref.S.double().sum(0) - expected).norm()
    # refit_head on its own: same optimum from the same start
    W1, b1, _ = refit_head(feats.h, feats.y, W0, b0, lam)
    torch.testing.assert_close(W1, ref.W, rtol=1e-5, atol=1e-6)
    with pytest.raises(PruneDataError, match="damping"):
        refit_head(feats.h, feats.y, W0, b0, 0.0)


def test_registered_method_refit_head_option(small_fmnist):
    cfg = MethodConfig(model="mlp", epochs=1, batch_size=64, show_progress=False)
    net = cfg.make_model()
    sel = select("influence", small_fmnist, 0.5, config=cfg, model=net, refit_head=True)
    assert sel.params["refit_head"] is True and sel.num_kept == 150
    assert sel.metrics["head_refit"]["grad_norm_after"] < 1e-5
    with pytest.raises(PruneDataError, match="refit_head"):
        select("influence", small_fmnist, 0.5, config=cfg, model=net, refit_head="yes")
    with pytest.raises(PruneDataError, match="effort"):
        select("influence", small_fmnist, 0.5, config=cfg, model=net, effort=0)
