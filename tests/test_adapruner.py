import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, TensorDataset

from prunedata import (AdaPruner, AdaPrunerSampler, IndexedDataset, LossShapeError, NonFiniteLossError,
                       PruneDataError, Selection)
from prunedata.training import per_sample_losses, train_adapruner


def toy(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g))


# ------------------------------------------------------------------ parameters
@pytest.mark.parametrize("ratio,msg", [(70, "0.7"), (0, "strictly between 0 and 1"), (1.0, "keeps everything"),
                                       (-0.2, "strictly between"), (float("nan"), "strictly between"),
                                       ("abc", "must be a number")])
def test_bad_keep_ratio(ratio, msg):
    with pytest.raises(PruneDataError, match=msg):
        AdaPruner(10, ratio)


def test_bad_schedule():
    with pytest.raises(PruneDataError, match="warmup_epochs"):
        AdaPruner(10, 0.5, epochs=2, warmup_epochs=2)
    with pytest.raises(PruneDataError, match="alpha_init"):
        AdaPruner(10, 0.5, alpha_init=5, alpha_final=1)


def test_alpha_ramp_and_warmup():
    p = AdaPruner(10, 0.5, epochs=6, warmup_epochs=2, alpha_init=0.1, alpha_final=5.0)
    alphas, warm = [], []
    for e in range(6):
        p.set_epoch(e)
        alphas.append(p.alpha)
        warm.append(p.in_warmup)
    assert warm == [True, True, False, False, False, False]
    assert alphas[2] == pytest.approx(0.1) and alphas[5] == pytest.approx(5.0)
    assert np.all(np.diff(alphas[2:]) > 0)
    np.testing.assert_allclose(np.diff(alphas[2:]), (5.0 - 0.1) / 3)


def test_alpha_rises_every_step_not_in_jumps():
    """Within an epoch alpha moves with the fraction of samples seen, so it never jumps at epoch ends."""
    p = AdaPruner(40, 0.5, epochs=4, warmup_epochs=1, alpha_init=0.1, alpha_final=2.1)
    p.set_epoch(1)
    seen = []
    for b in range(4):  # 4 batches of 10 = one epoch
        seen.append(p.alpha)
        p.loss(torch.arange(b * 10, b * 10 + 10), torch.rand(10) + 0.1).backward()
        p.step()
    end_of_epoch = p.alpha
    p.end_epoch()
    np.testing.assert_allclose(seen, [0.1, 0.35, 0.6, 0.85])
    assert end_of_epoch == pytest.approx(1.1) and p.alpha == pytest.approx(1.1)  # continuous across epochs
    assert p.history[-1]["alpha"] == pytest.approx(0.1) and p.history[-1]["alpha_end"] == pytest.approx(1.1)


def _prune_fixed_losses(p, losses, batch, seed=0, stop=None):
    """Mini-batch pruning epochs with fixed per-sample losses (random order each epoch)."""
    g = torch.Generator().manual_seed(seed + p.epoch)
    for e in range(p.epoch, p.epochs if stop is None else stop):
        p.set_epoch(e)
        order = torch.randperm(p.num_samples, generator=g)
        for b in range(0, p.num_samples, batch):
            idx = order[b:b + batch]
            p.loss(idx, losses[idx]).backward()
            p.step()
        p.end_epoch()


def test_mask_learns_through_every_pruning_epoch_and_keeps_the_exact_count():
    """No hold: the mask moves in every pruning epoch (the last included), the binarised ratio is the
    target after every epoch, and the final count is exactly round(keep_ratio*N)."""
    n = 2000
    # log-spaced like a trained model's losses; L - log L falls on (0, 1]: low losses are pushed out hardest
    losses = torch.logspace(-4, 0, n)
    p = AdaPruner(n, 0.5, epochs=4, warmup_epochs=0)
    _prune_fixed_losses(p, losses, batch=50, stop=3)
    before = p.mask.detach().clone()
    _prune_fixed_losses(p, losses, batch=50)
    assert not torch.allclose(before, p.mask.detach())  # still learning in the last epoch
    assert [h["keep_ratio_threshold"] for h in p.history] == [0.5] * 4
    keep = p.binarize()
    assert keep.sum() == 1000 and p.count_rule == "exact"
    # the low-loss half is pruned far more than the high-loss half
    assert keep[n // 2:].mean() > 0.65 and keep[: n // 2].mean() < 0.35
    sel = p.selection()
    assert sel.num_kept == 1000 and sel.params["count_rule"] == "exact" and sel.metrics["count_rule"] == "exact"


@pytest.mark.parametrize("keep_ratio", [0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97, 0.98, 0.99])
@pytest.mark.parametrize("mode", ["exact", "band", "threshold"])
def test_every_keep_ratio_gets_its_count(keep_ratio, mode):
    n = 1000
    losses = torch.logspace(-4, 1, n)[torch.randperm(n, generator=torch.Generator().manual_seed(1))]
    p = AdaPruner(n, keep_ratio, epochs=4, warmup_epochs=1, binarize=mode)
    p.set_epoch(1)
    _prune_fixed_losses(p, losses, batch=50)
    sel = p.selection()
    if mode == "exact":
        assert sel.num_kept == round(keep_ratio * n) and sel.params["count_rule"] == "exact"
    elif mode == "band":
        assert abs(sel.num_kept / n - keep_ratio) <= 0.02 + 1e-9 and sel.params["count_rule"] == "largest-gap"
    else:
        assert abs(sel.num_kept / n - keep_ratio) <= 0.02 + 1e-9
        thr = int((p.mask.detach() >= 0).sum())
        assert (sel.params["count_rule"] == "threshold") == (sel.num_kept == thr)
    # the kept samples are the ones the mask ranks highest, and the scores rank them (no mass ties)
    assert sel.scores[sel.mask].min() >= sel.scores[~sel.mask].max()
    _, counts = np.unique(sel.scores, return_counts=True)
    assert counts.max() <= 3 and len(counts) >= 0.97 * n, (counts.max(), len(counts))


def test_band_mode_cuts_at_the_masks_largest_gap_inside_the_band():
    n = 1000
    p = AdaPruner(n, 0.7, epochs=2, warmup_epochs=1, binarize="band")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # 709 high logits, 291 low ones: the mask's own break is inside the band
        m = torch.rand(n, generator=g)
        m[torch.randperm(n, generator=g)[:709]] += 1.5
        p.mask.copy_(m)
    keep = p.binarize()
    assert keep.sum() == 709 and p.count_rule == "largest-gap"
    assert np.array_equal(keep, (m > 1.2).numpy())
    with torch.no_grad():  # a break outside the band: the count stays inside it
        p.mask.copy_(torch.where(m > 1.2, m, m - 0.5) + torch.where(torch.arange(n) < 100, 5.0, 0.0))
    assert 680 <= p.binarize().sum() <= 720


def test_threshold_mode_keeps_the_masks_own_count_inside_the_band_and_says_so(caplog):
    n = 1000
    p = AdaPruner(n, 0.7, epochs=2, warmup_epochs=1, binarize="threshold")
    p.set_epoch(2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # 70.9% of the logits >= 0: inside the band, not at an edge
        p.mask.copy_(torch.randn(n, generator=g))
        p.mask.sub_(torch.quantile(p.mask, 1 - 0.709))
    k_thr = int((p.mask >= 0).sum())
    assert 0.68 * n < k_thr < 0.72 * n
    keep = p.binarize()
    assert keep.sum() == k_thr and p.count_rule == "threshold"
    with torch.no_grad():
        p.mask.sub_(1.0)  # far below the band: the band's lower edge, by rank, with a warning
    keep = p.binarize()
    assert keep.sum() == 680 and p.count_rule == "clipped-to-band"
    assert "outside keep_ratio" in caplog.text


def test_ties_are_broken_by_a_seeded_random_order_not_by_index():
    n = 400
    kept = {}
    for seed in (0, 1):
        p = AdaPruner(n, 0.5, epochs=2, warmup_epochs=1, seed=seed)  # all logits equal: one big tie
        kept[seed] = p.binarize()
        assert kept[seed].sum() == 200
        assert np.array_equal(kept[seed], AdaPruner(n, 0.5, epochs=2, warmup_epochs=1, seed=seed).binarize())
        assert 0.35 < kept[seed][: n // 2].mean() < 0.65  # not the low indices
    assert not np.array_equal(kept[0], kept[1])


def _gaussian_run(n, keep_ratio, seed, epochs=6, warmup=2):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(4, 8, generator=g) * 1.5
    y = torch.randint(0, 4, (n,), generator=g)
    ds = TensorDataset(mu[y] + torch.randn(n, 8, generator=g), y)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    p = AdaPruner(n, keep_ratio, epochs=epochs, warmup_epochs=warmup, seed=seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only add contention on a busy machine
    try:
        train_adapruner(model, ds, p, batch_size=64, lr=0.05, seed=seed, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    return p, ds, model


def _epoch_position(n, sampler_seed, epoch):
    """Position (0..1) of every sample in AdaPrunerSampler's shuffle of ``epoch``."""
    g = torch.Generator()
    g.manual_seed(sampler_seed + epoch)
    pos = np.empty(n)
    pos[torch.randperm(n, generator=g).numpy()] = np.arange(n) / n
    return pos


def test_keep_probability_does_not_depend_on_last_epoch_shuffle_position():
    """A sample visited early in the last epoch is kept as often as one visited late (a hold that
    freezes the mask mid-epoch kept late-visited samples 5-13 points more often)."""
    n, gaps = 3000, []
    for seed in (0, 1, 2):
        p, _, _ = _gaussian_run(n, 0.7, seed)
        keep = p.binarize()
        for e in range(p.warmup_epochs, p.epochs):  # and in no pruning epoch's order either
            pos = _epoch_position(n, seed, e)
            gap = keep[pos >= 2 / 3].mean() - keep[pos < 1 / 3].mean()
            if e == p.epochs - 1:
                gaps.append(gap)
            assert abs(gap) < 0.06, (seed, e, gap)
    assert abs(np.mean(gaps)) < 0.025, gaps


@pytest.mark.parametrize("keep_ratio", [0.98, 0.99])
def test_high_keep_ratios_prune_the_right_number_spread_over_training(keep_ratio):
    """0.98/0.99 start inside the band (all kept = 1.0): they must still prune 2%/1%, chosen by the
    whole run, not the first batch's samples."""
    n = 3000
    p, ds, model = _gaussian_run(n, keep_ratio, seed=0)
    keep = p.binarize()
    assert (~keep).sum() == round((1 - keep_ratio) * n)
    first_pruning_epoch = _epoch_position(n, 0, p.warmup_epochs)
    assert first_pruning_epoch[~keep].max() > 0.5  # not all from the start of the first pruning epoch
    # the pruned samples are the mask's lowest, and the mask follows the paper's signal L - log L
    losses = per_sample_losses(model, ds)
    sig = losses - np.log(np.maximum(losses, 1e-6))
    assert np.median(sig[~keep]) > np.median(sig[keep])


# ------------------------------------------------------------------ per-step inputs
def test_loss_input_errors():
    p = AdaPruner(10, 0.5, epochs=3, warmup_epochs=1)
    p.set_epoch(1)
    idx = torch.tensor([0, 1, 2])
    with pytest.raises(LossShapeError, match="reduction='none'"):
        p.loss(idx, torch.tensor(1.0, requires_grad=True))
    with pytest.raises(LossShapeError, match="3 sample ids"):
        p.loss(idx, torch.ones(4))
    with pytest.raises(NonFiniteLossError, match="NaN"):
        p.loss(idx, torch.tensor([1.0, float("nan"), 1.0]))
    with pytest.raises(PruneDataError, match="outside the dataset"):
        p.loss(torch.tensor([0, 10, 2]), torch.ones(3))
    with pytest.raises(PruneDataError, match="outside the dataset"):
        p.loss(torch.tensor([-1, 0, 2]), torch.ones(3))
    with pytest.raises(PruneDataError, match="integer"):
        p.loss(torch.tensor([0.0, 1.0, 2.0]), torch.ones(3))
    with pytest.raises(PruneDataError, match="IndexedDataset"):
        p.loss("0,1,2", torch.ones(3))
    with pytest.raises(LossShapeError, match="1-D"):
        p.loss(idx, torch.ones(3, 4))


def test_weights_follow_dataset_indices_not_batch_positions():
    p = AdaPruner(6, 0.5, epochs=3, warmup_epochs=1, alpha_init=5.0, alpha_final=5.0)
    p.set_epoch(1)
    with torch.no_grad():
        p.mask.copy_(torch.tensor([3.0, -3.0, 3.0, -3.0, 3.0, -3.0]))
    w = p.weights(torch.tensor([5, 0, 3, 2]))
    assert w[0] < 1e-6 and w[1] > 1 - 1e-6 and w[2] < 1e-6 and w[3] > 1 - 1e-6


def test_pruned_samples_get_no_model_gradient():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = toy(4).tensors
    p = AdaPruner(4, 0.5, epochs=3, warmup_epochs=1, alpha_init=5.0, alpha_final=5.0)
    p.set_epoch(1)
    with torch.no_grad():
        p.mask.copy_(torch.tensor([4.0, -4.0, 4.0, -4.0]))  # weights ~1, ~0, ~1, ~0
    idx = torch.arange(4)
    loss = p.loss(idx, F.cross_entropy(model(x), y, reduction="none"))
    loss.backward()
    g_all = model.weight.grad.clone()
    model.zero_grad()
    kept = torch.tensor([0, 2])
    (F.cross_entropy(model(x[kept]), y[kept], reduction="sum") / 4).backward()
    torch.testing.assert_close(g_all, model.weight.grad, atol=1e-6, rtol=1e-3)


def test_warmup_is_plain_mean_and_mask_does_not_move():
    p = AdaPruner(8, 0.5, epochs=3, warmup_epochs=1)
    losses = torch.rand(4, requires_grad=True)
    out = p.loss(torch.arange(4), losses)
    assert torch.allclose(out, losses.mean())
    before = p.mask.detach().clone()
    out.backward()
    p.step()
    assert torch.equal(before, p.mask.detach())


def test_mask_moves_easy_samples_down():
    """The selection term prunes low-loss samples first (Eq. 5)."""
    p = AdaPruner(4, 0.5, epochs=3, warmup_epochs=1)
    p.set_epoch(1)
    losses = torch.tensor([1e-4, 0.5, 0.5, 0.5])
    p.loss(torch.arange(4), losses).backward()
    p.step()
    m = p.mask.detach()
    assert m[0] < m[1] and m[1] == m[2] == m[3]


@pytest.mark.parametrize("kw,msg", [
    (dict(mask_lr=float("nan")), "mask_lr must be a finite number"), (dict(mask_lr=0.0), "mask_lr must be > 0"),
    (dict(mask_lr=-1.0), "mask_lr must be > 0"), (dict(alpha_init=float("nan")), "alpha_init must be a finite"),
    (dict(alpha_final=float("inf")), "alpha_final must be a finite"), (dict(scale=-1.0), "scale"),
    (dict(tolerance=float("nan")), "tolerance"), (dict(loss_eps=0.0), "loss_eps"), (dict(logit_clip=-1.0), "logit_clip"),
    (dict(binarize="median"), "binarize"), (dict(seed=1.5), "seed"), (dict(mask_lr="fast"), "must be a number"),
    (dict(task_weight=-1.0), "task_weight"),
])
def test_bad_parameters_name_what_is_wrong(kw, msg):
    with pytest.raises(PruneDataError, match=msg):
        AdaPruner(10, 0.5, epochs=3, warmup_epochs=1, **kw)


def test_negative_losses_and_empty_batches():
    p = AdaPruner(10, 0.5, epochs=3, warmup_epochs=1)
    p.set_epoch(1)
    with pytest.raises(LossShapeError, match="negative"):
        p.loss(torch.tensor([0, 1]), torch.tensor([0.5, -0.1]))
    with pytest.raises(LossShapeError, match="negative"):
        p.mask_loss(torch.tensor([0, 1]), torch.tensor([0.5, -0.1]))
    for epoch in (0, 1):  # warm-up and pruning: an empty batch gives a zero loss, never NaN
        p.set_epoch(epoch)
        out = p.loss(torch.zeros(0, dtype=torch.long), torch.zeros(0, requires_grad=True))
        assert torch.isfinite(out) and float(out.detach()) == 0.0
        out.backward()
        p.step()
    assert torch.isfinite(p.mask).all()


def test_weights_are_detached_and_the_two_documented_loops_give_the_same_mask():
    """``loss(idx, l)`` and ``(weights(idx) * l).mean() + mask_loss(idx, l)`` are one algorithm."""
    ds = toy(120, seed=2)
    x, y = ds.tensors
    results = []
    for way in ("loss", "weights+mask_loss"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        p = AdaPruner(120, 0.6, epochs=4, warmup_epochs=1)
        g = torch.Generator().manual_seed(0)
        for e in range(4):
            p.set_epoch(e)
            for idx in torch.randperm(120, generator=g).split(16):
                losses = F.cross_entropy(model(x[idx]), y[idx], reduction="none")
                if way == "loss":
                    total = p.loss(idx, losses)
                else:
                    w = p.weights(idx)
                    assert not w.requires_grad
                    total = (w * losses).mean() + p.mask_loss(idx, losses)
                opt.zero_grad()
                total.backward()
                opt.step()
                p.step()
            p.end_epoch()
        results.append((p.mask.detach().clone(), [q.detach().clone() for q in model.parameters()], p.binarize()))
    (m1, w1, k1), (m2, w2, k2) = results
    torch.testing.assert_close(m1, m2, rtol=0, atol=1e-6)
    for a, b in zip(w1, w2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert np.array_equal(k1, k2) and k1.sum() == 72
    assert m1.std() > 0.01  # the mask did learn


def test_weights_alone_do_not_move_the_mask():
    p = AdaPruner(8, 0.5, epochs=3, warmup_epochs=1)
    p.set_epoch(1)
    losses = torch.rand(4, requires_grad=True)
    (p.weights(torch.arange(4)) * losses).mean().backward()
    before = p.mask.detach().clone()
    p.step()
    assert p.mask.grad is None and torch.equal(before, p.mask.detach())


# ------------------------------------------------------------------ sampler
def test_sampler_with_dataloader_batch_size_and_batch_sampler():
    ds = IndexedDataset(toy(50))
    s = AdaPrunerSampler(AdaPruner(50, 0.5, epochs=3, warmup_epochs=1), seed=3)
    loader = DataLoader(ds, batch_size=8, sampler=s)
    seen = torch.cat([idx for idx, _ in loader])
    assert sorted(seen.tolist()) == list(range(50))  # the epoch ends, each sample once
    assert len(loader) == 7
    again = torch.cat([idx for idx, _ in loader])
    assert torch.equal(seen, again)  # same epoch, same order
    s.set_epoch(1)
    other = torch.cat([idx for idx, _ in loader])
    assert not torch.equal(seen, other) and sorted(other.tolist()) == list(range(50))
    bl = DataLoader(ds, batch_sampler=BatchSampler(s, 8, drop_last=False))
    assert sorted(torch.cat([i for i, _ in bl]).tolist()) == list(range(50))


def test_sampler_with_workers_keeps_ids_with_data():
    base = toy(40)
    ds = IndexedDataset(base)
    s = AdaPrunerSampler(AdaPruner(40, 0.5, epochs=2, warmup_epochs=1), seed=0)
    loader = DataLoader(ds, batch_size=7, sampler=s, num_workers=2)
    n = 0
    for idx, (x, y) in loader:
        for i, xi in zip(idx.tolist(), x):
            assert torch.equal(xi, base[i][0])
            n += 1
    assert n == 40


def test_rank_sharding_partitions_the_epoch():
    p = AdaPruner(23, 0.5, epochs=2, warmup_epochs=1)
    shards = [list(AdaPrunerSampler(p, seed=1, num_replicas=3, rank=r)) for r in range(3)]
    assert all(len(sh) == 8 for sh in shards)
    flat = sum(shards, [])
    assert set(flat) == set(range(23)) and len(flat) == 24  # one padded repeat, like DistributedSampler
    with pytest.raises(PruneDataError, match="rank"):
        AdaPrunerSampler(p, num_replicas=2, rank=2)


# ------------------------------------------------------------------ end to end
def _tiny_run(tmp_path, stop=None, resume=False, ckpt_name="ck.pt"):
    ds = toy(96, seed=1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(16, 3))
    p = AdaPruner(len(ds), 0.6, epochs=5, warmup_epochs=1)
    train_adapruner(model, ds, p, batch_size=16, seed=7, checkpoint=tmp_path / ckpt_name, resume=resume,
                    stop_after_epoch=stop, show_progress=False)
    return p, model


def test_resume_gives_the_same_selection(tmp_path):
    full, m_full = _tiny_run(tmp_path, ckpt_name="a.pt")
    part, _ = _tiny_run(tmp_path, stop=2, ckpt_name="b.pt")
    assert part.epoch == 2
    resumed, m_res = _tiny_run(tmp_path, resume=True, ckpt_name="b.pt")
    assert resumed.epoch == 5
    torch.testing.assert_close(full.mask.detach(), resumed.mask.detach(), rtol=0, atol=0)
    for a, b in zip(m_full.parameters(), m_res.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert np.array_equal(full.selection().kept, resumed.selection().kept)


def test_checkpoint_with_other_params_is_refused(tmp_path):
    p, _ = _tiny_run(tmp_path, stop=1)
    q = AdaPruner(96, 0.5, epochs=5, warmup_epochs=1)
    with pytest.raises(PruneDataError, match="other AdaPruner parameters"):
        q.load_state_dict(p.state_dict())
    with pytest.raises(PruneDataError, match="96 samples"):
        AdaPruner(10, 0.6, epochs=5, warmup_epochs=1).load_state_dict(p.state_dict())


def test_corrupt_checkpoint_gives_clear_error(tmp_path):
    from prunedata.checkpoint import load_checkpoint

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(PruneDataError, match="cannot read checkpoint"):
        load_checkpoint(bad)


@pytest.mark.slow
def test_real_fashion_mnist_prunes_easy_samples_exact_count(fmnist_small, tmp_path):
    """On real data: requested keep ratio is met (±2%) and the pruned samples are the easy ones."""
    from prunedata.models import make_model

    ds = fmnist_small
    torch.manual_seed(0)
    model = make_model("cnn")
    p = AdaPruner(len(ds), 0.7, epochs=6, warmup_epochs=1)
    train_adapruner(model, ds, p, batch_size=64, lr=0.05, seed=0, show_progress=False)
    sel = p.selection(ds)
    assert sel.num_kept == round(0.7 * len(ds)) and sel.params["count_rule"] == "exact"
    # the mask's own threshold is on the target after every pruning epoch (no hold, no fallback)
    assert [h["keep_ratio_threshold"] for h in p.history[1:]] == [pytest.approx(0.7, abs=1e-3)] * 5
    assert sel.num_kept == int(sel.mask.sum())
    assert len(p.history) == 6 and p.history[-1]["alpha"] == pytest.approx(5.0)
    # easy (low-loss) samples are pruned first: compare with random selections of equal size
    losses = per_sample_losses(model, ds)
    pruned_median = np.median(losses[~sel.mask])
    rng = np.random.default_rng(0)
    rand_medians = [np.median(losses[rng.choice(len(ds), sel.num_pruned, replace=False)]) for _ in range(20)]
    assert pruned_median < 0.5 * min(rand_medians)
    assert np.median(losses[sel.mask]) > np.median(losses[~sel.mask])
    back = Selection.load(sel.save(tmp_path / "s.json"), ds)
    assert back.method == "adapruner" and back.params["keep_ratio"] == 0.7
    assert back.score_name == "mask_logit" and back.scores.shape == (len(ds),)


def test_registry_method_class_balanced_keeps_each_class_share():
    # the mask alone prunes easy classes harder; class_balanced splits the same kept count over the
    # classes in proportion and keeps the largest mask logits within each
    from prunedata.datasets import FashionMNIST
    from prunedata.methods.registry import MethodConfig, select
    from prunedata.methods.scoring import apportion

    ds = FashionMNIST(train=True, max_samples=1000)
    labels = np.asarray(ds.targets)
    cfg = MethodConfig(model="cnn", epochs=2, batch_size=128, lr=0.05, seed=3, show_progress=False,
                       class_balanced=True)
    sel = select("adapruner", ds, 0.5, config=cfg)
    assert sel.params["class_balanced"] is True
    assert abs(sel.keep_ratio - 0.5) <= 0.02 + 1e-9
    counts = np.bincount(labels[sel.kept], minlength=10)
    want = apportion(np.bincount(labels, minlength=10), sel.num_kept)
    assert counts.tolist() == list(want)
    keep = sel.mask
    for c in range(10):
        in_c = labels == c
        assert sel.scores[in_c & keep].min() >= sel.scores[in_c & ~keep].max()
    assert sel.metrics["kept_by_mask_alone"] <= sel.num_kept


@pytest.mark.parametrize("task_weight,kept_level", [(1.0, 1.0), (100.0, 0.01)])
def test_task_weight_sets_the_loss_level_kept_longest(task_weight, kept_level):
    """The per-sample signal a*L - log L is lowest at L = 1/a: those samples are kept."""
    n = 1000
    losses = torch.logspace(-4, 1, n)
    p = AdaPruner(n, 0.2, epochs=3, warmup_epochs=0, task_weight=task_weight)
    _prune_fixed_losses(p, losses, batch=50)
    kept = losses[torch.from_numpy(p.binarize())]
    assert kept.min() < kept_level < kept.max()
    assert abs(float(torch.log10(kept).median()) - np.log10(kept_level)) < 0.3
