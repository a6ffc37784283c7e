"""AdaPruner (Yang et al., 2024): learn a per-sample keep-mask jointly with the model.

The mask is one tensor of logits ``m`` with an entry per dataset sample (index), and sample weights
``w = sigmoid(alpha * m)``. Each training step combines

* ``L_classification = mean_b(w_i * L_i)`` -- the task loss of the kept samples (pruned samples stay
  in the batch with ~zero weight, so batches never become ragged);
* ``L_selection = sum_b(w_i * -log L_i) / N`` -- pushes easy (low-loss) samples out;
* ``lambda * (mean(sigmoid(alpha*m)) - keep_ratio)^2`` with ``lambda = s * |r - keep_ratio|``, ``r``
  the current binarised keep ratio -- drives the mask towards the requested size.

Warm-up epochs train the model on all samples before the mask moves; ``alpha`` then rises linearly,
step by step, from ``alpha_init`` to ``alpha_final``.

Stopping and the kept count. The paper: "After each pruning step, the ADP module checks the gap
between the practical and expected pruning ratios until it is below a predefined tolerance level"
and "Post-training, m will be strictly binarized". We implement the check as a constraint that holds
throughout pruning rather than as a stop (``binarize`` in :class:`AdaPruner`; by default the gap is
held at 0 by a common shift of the logits). The mask never stops learning: the selection is the
product of every pruning epoch and of the whole alpha ramp, and a sample's fate does not depend on
where it falls in an epoch's shuffle. (Freezing the mask the first time the ratio enters the band
did: it froze at the band's edge, mid-epoch, with later-visited samples kept more often.)

Scaling. The paper divides the per-sample terms by ``N``, the dataset size (Eq. 4-6). We follow it
for the mask's gradient and give the *model* the batch mean of the weighted loss (Eq. 4 with ``N``
the batch size), so ordinary learning rates apply. The selection term reaches only the mask.

Sample ids travel with the batch (:class:`~prunedata.identity.IndexedDataset`), never from batch
positions: ``loss(indices, losses)`` looks the mask up at the given dataset indices.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ..errors import PruneDataError
from ..ratios import check_keep_ratio, num_to_keep
from .checks import check_number, check_per_sample_losses
from .keys import MaskKeys
from .result import MaskResult
from .sync import MaskSync

logger = logging.getLogger("prunedata.adapruner")


class AdaPruner(MaskKeys, MaskSync, MaskResult):
    """Learnable per-sample mask and its schedule: the one mask object (single process or DDP).

    Parameters (paper defaults)
    ---------------------------
    num_samples: dataset size ``N``.
    keep_ratio: fraction of samples to keep (the paper's "compression ratio" ``c_r``), in (0, 1).
    epochs: total epochs of joint training, warm-up included.
    warmup_epochs: epochs on the full data before the mask starts to move.
    alpha_init, alpha_final: sigmoid sharpness, ramped linearly over the pruning epochs (0.1 -> 5),
        advanced every step; final from the start of the last pruning epoch.
    scale: ``s`` in ``lambda = s * |r - keep_ratio|`` (100).
    tolerance: allowed deviation of the final keep ratio with ``binarize="band"`` or "threshold" (0.02).
    mask_lr, mask_optimizer: the mask's own optimiser. With "sgd" (default) the per-sample terms
        use the learning rate ``mask_lr * N / alpha``, which cancels the 1/N of the loss and the alpha
        of the sigmoid's slope (with ``straight_through``, see there), so visits early and late in the
        alpha ramp count alike. The compression term's (dense) gradient is applied in closed form in
        the sigmoid's input space (``mask_lr * N / alpha**2``) with its step capped so that the
        feedback gain ``lr * 2*lambda * mean((w(1-w))^2)`` stays <= 0.5 (no overshoot). "adam" uses
        ``mask_lr`` as is.
    mask_init: initial logit of every entry (0: weight 0.5 when pruning starts; warm-up uses weight 1).
    logit_clip: the mask's gradient factor ``alpha*w(1-w)`` is taken at ``clamp(alpha*m, +-logit_clip)``,
        so a saturated sample can still move (the factor stays >= ~0.0025*alpha) and the compression
        term can still correct the ratio. The weights themselves are the exact ``sigmoid(alpha*m)``
        and the logits are never clipped, so they keep their order (the saved scores have no mass
        ties at a bound). 0 or None: no floor.
    loss_eps: floor of ``L_i`` inside ``-log L_i``.
    task_weight: weight ``a`` of the task loss in the mask's per-sample signal ``a*L_i - log L_i``
        (1: the paper, Eq. 4-6 both divided by N). The signal is lowest, so the sample is kept
        longest, at ``L_i = 1/a``: 1 keeps samples whose loss stays near 1 (hard ones) and prunes
        both the easiest and the hardest; a larger ``a`` keeps easier samples. Not a tuned fix:
        on all of Fashion-MNIST at 70% pruned, ``a = N/B`` (468.75) was worse than ``a = 1`` on an
        unseen MLP and better on a linear model, both still below random (BENCHMARKS.md, issue 14).
    binarize: how many samples are kept, and how the mask is held at that size while it learns:

        * ``"exact"`` (default; alias ``"topk"``): exactly ``round(keep_ratio*N)`` samples, those
          with the largest final logits. During training the logits are shifted by one constant
          (after the steps that complete each 1/64 of an epoch, and at every epoch end) so that
          exactly that many have ``m >= 0``: the binarised ratio ``r`` equals the target at every
          step (the shift does the compression term's job exactly), and the per-sample terms decide
          only *which* samples are kept. The shift changes no sample's rank.
        * ``"band"``: trained like "exact"; the count is then chosen by the learned mask inside
          ``keep_ratio +- tolerance`` (the paper's 2% band): at the largest gap between consecutive
          sorted final logits, where the mask itself separates kept from pruned.
        * ``"threshold"``: the paper's compression term alone steers the ratio (no projection); the
          count is the final mask's own threshold count ``m >= 0`` if that lies within the band, else
          the nearest band edge (by rank, warned). Without a hold the ratio drifts below the target
          (every per-sample step points down while ``lambda -> 0``), so it usually ends at the lower
          edge.

        The selection records the rule that gave the count (``params["count_rule"]``).
    straight_through: the per-sample terms reach the mask through the sigmoid's slope at the cut,
        ``alpha/4``, for every sample (a straight-through estimate of the binary mask's gradient),
        instead of the exact ``alpha*w(1-w)``. Each visit then moves ``m_i`` by
        ``mask_lr/4 * (L_i - log L_i)`` and the final logits are the paper's per-sample signal summed
        over every visit of the pruning schedule. With the exact slope a sample's step depends on
        where its logit happens to sit when it is visited: in the first pruning epoch the samples
        visited late have been shifted up (their slope is smaller), so they are pushed less and kept
        more (Gaussian toy problem, keep 0.7: 35% vs 97% kept by first-epoch position), and a
        saturated sample stops moving for good. False: the paper's exact gradient.
    seed: seeds the random order that breaks ties between equal logits in the final ranking
        (never the dataset index).
    process_group: ``"world"`` (every rank of the default process group, looked up when used) or a
        ``torch.distributed`` process group, whose ranks share this mask: the mask gradient and the
        epoch statistics are summed over them, and at each epoch end every rank's mask is checked
        against rank 0's (differences up to ``sync_tolerance`` are float noise and removed; larger
        ones raise :class:`~prunedata.distributed.DistributedError`). ``None`` (default): no
        synchronisation -- one process, or one independent mask per rank.

    Not a ``torch.nn.Module``: the mask is not a model parameter (it must not be in a model's
    optimiser or ``state_dict``); :meth:`state_dict` / :meth:`load_state_dict` hold its whole state.
    """

    _BINARIZE = {"exact": "exact", "topk": "exact", "band": "band", "threshold": "threshold"}
    PROJECTIONS_PER_EPOCH = 64

    def __init__(self, num_samples: int, keep_ratio: float, *, epochs: int = 10, warmup_epochs: int = 2,
                 alpha_init: float = 0.1, alpha_final: float = 5.0, scale: float = 100.0,
                 tolerance: float = 0.02, mask_lr: float = 1.0, mask_optimizer: str = "sgd",
                 mask_init: float = 0.0, loss_eps: float = 1e-6, binarize: str = "exact",
                 logit_clip: Optional[float] = 6.0, straight_through: bool = True, task_weight: float = 1.0,
                 seed: int = 0, device: Any = None, process_group: Any = None, sync_tolerance: float = 1e-3):
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples <= 0:
            raise PruneDataError(f"num_samples must be a positive int (the dataset size), got {num_samples!r}")
        self.num_samples = int(num_samples)
        self.keep_ratio = check_keep_ratio(keep_ratio)
        if int(epochs) < 1:
            raise PruneDataError(f"epochs must be >= 1, got {epochs}")
        if not 0 <= int(warmup_epochs) < int(epochs):
            raise PruneDataError(f"warmup_epochs must be in [0, epochs) so that at least one epoch prunes; got "
                                 f"warmup_epochs={warmup_epochs}, epochs={epochs}")
        self.epochs, self.warmup_epochs = int(epochs), int(warmup_epochs)
        self.alpha_init, self.alpha_final = check_number(alpha_init, "alpha_init"), check_number(alpha_final, "alpha_final")
        self.tolerance, self.mask_lr = check_number(tolerance, "tolerance"), check_number(mask_lr, "mask_lr")
        self.scale, self.mask_init = check_number(scale, "scale"), check_number(mask_init, "mask_init")
        self.loss_eps, self.task_weight = check_number(loss_eps, "loss_eps"), check_number(task_weight, "task_weight")
        if self.task_weight < 0:
            raise PruneDataError(f"task_weight must be >= 0 (the weight of L in a*L - log L), got {task_weight}; "
                                 "the paper's is 1")
        if not 0 <= self.tolerance < 0.5:
            raise PruneDataError(f"tolerance must be in [0, 0.5), got {tolerance}; 0.02 is the paper's")
        if self.alpha_init <= 0 or self.alpha_final < self.alpha_init:
            raise PruneDataError(f"need 0 < alpha_init <= alpha_final, got alpha_init={alpha_init}, "
                                 f"alpha_final={alpha_final}; the paper ramps 0.1 -> 5")
        if self.mask_lr <= 0:
            raise PruneDataError(f"mask_lr must be > 0 (the mask's learning rate), got {mask_lr}; the default is 1.0")
        if self.scale < 0:
            raise PruneDataError(f"scale (s in lambda = s*|r - keep_ratio|) must be >= 0, got {scale}; "
                                 "the paper uses 100")
        if self.loss_eps <= 0:
            raise PruneDataError(f"loss_eps (the floor of L inside -log L) must be > 0, got {loss_eps}")
        if logit_clip is not None and check_number(logit_clip, "logit_clip") < 0:
            raise PruneDataError(f"logit_clip must be > 0 (or 0/None for no clamp), got {logit_clip}")
        if binarize not in self._BINARIZE:
            raise PruneDataError(f"binarize must be 'exact' (alias 'topk'), 'band' or 'threshold', got {binarize!r}")
        if mask_optimizer not in ("adam", "sgd"):
            raise PruneDataError(f"mask_optimizer must be 'adam' or 'sgd', got {mask_optimizer!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise PruneDataError(f"seed must be an int, got {seed!r}")
        if isinstance(process_group, str) and process_group != "world":
            raise PruneDataError(f"process_group must be 'world', a torch.distributed process group or None, got "
                                 f"{process_group!r}")
        self.mask_optimizer_name = mask_optimizer
        self.binarize_mode = self._BINARIZE[binarize]
        self.logit_clip = float(logit_clip or 0.0)
        self.seed = int(seed)
        self.straight_through = bool(straight_through)
        self.mask = nn.Parameter(torch.full((self.num_samples,), self.mask_init, device=device))
        # "sgd" steps are taken in closed form in step(); only "adam" keeps an optimiser state
        self.optimizer = torch.optim.Adam([self.mask], lr=self.mask_lr) if mask_optimizer == "adam" else None
        self.epoch = self.global_step = 0
        self.history: List[Dict[str, Any]] = []
        self._last_terms: Dict[str, Any] = {}
        self._epoch_stats = _EpochStats()
        self._seen = torch.zeros(self.num_samples, dtype=torch.bool, device=self.mask.device)
        self._process_group = process_group
        self.keys: Optional[List[str]] = None       # the key table (use_keys), if entries have keys
        self._key_pos: Optional[Dict[str, int]] = None
        self.sync_tolerance = float(sync_tolerance)
        self._epoch_samples = 0  # samples passed through loss()/mask_loss() and stepped this epoch (paces alpha)
        self._pending_samples = 0  # samples of mask_loss() calls not yet followed by step()
        self._step_alpha: Optional[float] = None  # alpha of the last mask_loss(), used by step()
        self._comp: Optional[tuple] = None  # (lambda, mean weight - keep_ratio) of the last mask_loss()
        self._count_rule: Optional[str] = None
        self._since_project = 0  # samples stepped since the last projection (binarize="exact")

    # ------------------------------------------------------------------ schedule
    @property
    def in_warmup(self) -> bool:
        return self.epoch < self.warmup_epochs

    @property
    def process_group(self) -> Any:
        """The process group sharing this mask (``"world"``, a group, or ``None``)."""
        return self._process_group

    def _group(self) -> Any:
        """The process group for collectives (``None``: the default group)."""
        return None if isinstance(self._process_group, str) else self._process_group

    @property
    def world_size(self) -> int:
        """Ranks sharing the mask (1 without a process group)."""
        dist = torch.distributed
        if self._process_group is None or not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self._group())

    @property
    def _samples_per_epoch(self) -> int:
        """Samples this process sees per epoch (a rank's shard, padded like DistributedSampler, under
        DDP); paces the alpha ramp."""
        return -(-self.num_samples // self.world_size)

    @property
    def num_keep(self) -> int:
        """``round(keep_ratio * N)`` (at least 1): the number of samples ``binarize="exact"`` keeps."""
        return num_to_keep(self.num_samples, self.keep_ratio)

    @property
    def alpha(self) -> float:
        """Sigmoid sharpness now: a linear ramp over the pruning epochs, advanced every step.

        ``alpha_init`` when pruning starts, ``alpha_final`` from the start of the last pruning epoch
        on (with a single pruning epoch: at its end). The ramp moves with the fraction of the epoch's
        samples already stepped, so alpha never jumps between epochs: a jump multiplies every logit
        ``alpha*m`` at once and can saturate the whole mask before the compression term reacts.
        """
        return self._alpha_at(self.epoch, min(1.0, self._epoch_samples / max(1, self._samples_per_epoch)))

    def _alpha_at(self, epoch: int, frac: float) -> float:
        p = epoch - self.warmup_epochs
        if p < 0:
            return self.alpha_init
        t = min(1.0, (p + frac) / max(1, self.epochs - self.warmup_epochs - 1))  # 1 from the last pruning epoch
        return self.alpha_init + (self.alpha_final - self.alpha_init) * t

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (0-based). Called by :meth:`AdaPrunerSampler.set_epoch`."""
        epoch = int(epoch)
        if epoch < 0:
            raise PruneDataError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch
        self._epoch_samples = self._pending_samples = 0
        self._epoch_stats = _EpochStats()

    # ------------------------------------------------------------------ per-step API
    def _soft(self, m: torch.Tensor, alpha: float) -> torch.Tensor:
        """``sigmoid(alpha*m)`` in value. Its gradient: ``alpha/4`` (``straight_through``) or
        ``alpha*w(1-w)`` taken at ``clamp(alpha*m, +-logit_clip)``."""
        z = alpha * m
        w = torch.sigmoid(z)
        if not z.requires_grad:
            return w
        if self.straight_through:
            lin = 0.5 + 0.25 * z  # the sigmoid's tangent at the cut z = 0
            return lin + (w - lin).detach()
        if not self.logit_clip:
            return w
        zc = z + (z.detach().clamp(-self.logit_clip, self.logit_clip) - z.detach())  # value clamped, slope 1
        wc = torch.sigmoid(zc)
        return wc + (w - wc).detach()

    def _slope(self, m: torch.Tensor, alpha: float) -> torch.Tensor:
        """``w(1-w)`` at ``clamp(alpha*m, +-logit_clip)`` (the factor of every mask gradient), no grad."""
        z = alpha * m.detach()
        if self.logit_clip:
            z = z.clamp(-self.logit_clip, self.logit_clip)
        w = torch.sigmoid(z)
        return w * (1.0 - w)

    def weights(self, indices: Any) -> torch.Tensor:
        """Soft weights ``sigmoid(alpha*m)`` of the given samples, detached (1 during warm-up): a loop
        that uses the weights alone trains the model on the current mask without changing it."""
        return self._weights(self._check_indices(indices))

    def _weights(self, idx: torch.Tensor) -> torch.Tensor:
        if self.in_warmup:
            return torch.ones(idx.shape[0], device=self.mask.device)
        with torch.no_grad():
            return torch.sigmoid(self.alpha * self.mask[idx])

    def loss(self, indices: Any, losses: torch.Tensor) -> torch.Tensor:
        """Combined AdaPruner objective for one batch; call ``.backward()`` on it.

        ``indices``: dataset indices of the batch (from :class:`IndexedDataset`).
        ``losses``: per-sample task losses, unreduced (``reduction='none'``), shape ``(B,)``, >= 0.

        It is exactly ``(weights(indices) * losses).mean() + mask_loss(indices, losses)`` (same model
        gradient, same mask step): the model gets the batch mean of the weighted task loss (weights
        constant), the mask gets the paper's terms. Call :meth:`step` after ``backward()``.
        """
        idx = self._check_indices(indices)
        losses = check_per_sample_losses(losses, idx.shape[0])
        w = self._weights(idx).to(losses.device)
        cls_model = (w * losses).sum() / max(1, losses.shape[0])  # an empty batch gives 0, not NaN
        out = cls_model + self._mask_loss(idx, losses)
        self._last_terms["classification"] = cls_model.detach()
        return out

    def mask_loss(self, indices: Any, losses: torch.Tensor) -> torch.Tensor:
        """The mask's part of :meth:`loss` for one batch, for loops that weight the task loss themselves
        (once per batch). ``losses`` are detached here: the selection term ``-log L`` must not train
        the model. Zero during warm-up."""
        idx = self._check_indices(indices)
        return self._mask_loss(idx, check_per_sample_losses(losses, idx.shape[0]))

    def _mask_loss(self, idx: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        dev = losses.device
        self._seen[idx] = True
        alpha = self._step_alpha = self.alpha
        self._pending_samples += int(idx.shape[0])
        ld = losses.detach()
        if self.in_warmup:
            self._last_terms = {"alpha": alpha}
            self._epoch_stats.add(ld, None)
            return torch.zeros((), device=dev)
        w = self._soft(self.mask[idx], alpha)
        ld = ld.to(w.device)
        # mask: the paper's per-sample terms (classification + selection), divided by N
        mask_sel = (w * -torch.log(ld.clamp_min(self.loss_eps))).sum() / self.num_samples
        total = (self.task_weight * (w * ld).sum() / self.num_samples + mask_sel).to(dev)
        self._epoch_stats.add(ld, w.detach())
        if self.binarize_mode != "threshold":
            # the projection in step() holds the binarised ratio at the target exactly, so the
            # compression term is off (lambda = 0) and no dense O(N) work is done per step. Left on,
            # it acts only in the first pruning epoch, before all samples have been visited (unvisited
            # logits tie at 0, r > c), with a dense step that treats visited and unvisited samples
            # differently: the kept fraction then depended on the first epoch's order.
            self._comp = None
            self._last_terms = {"selection": mask_sel.detach(), "lambda": 0.0, "alpha": alpha}
            return total
        # compression term: its gradient is dense (every entry, every step) and is applied in closed
        # form in step() with its own stability cap (after the mask gradient's all-reduce, so it counts
        # once across ranks); it is kept out of the autograd graph here
        with torch.no_grad():
            mean_soft = torch.sigmoid(alpha * self.mask).mean()
            r = self._binary_ratio()  # current binarised keep ratio (tensor, no host sync)
            lam = self.scale * (r - self.keep_ratio).abs()
            comp = (mean_soft - self.keep_ratio) ** 2
        self._comp = (lam, mean_soft - self.keep_ratio)
        # tensors, converted to floats only when read (no per-step device sync)
        self._last_terms = {"selection": mask_sel.detach(), "compression": comp, "lambda": lam,
                            "alpha": alpha, "keep_ratio_now": r, "mean_weight": mean_soft}
        return total + (lam * comp).to(dev)

    def _binary_ratio(self) -> torch.Tensor:
        """Keep ratio of the binarised mask, ``sigmoid(alpha*m) >= 0.5`` (all kept at ``m = 0``)."""
        return (self.mask.detach() >= 0).float().mean()

    def step(self) -> None:
        """Update the mask (no-op during warm-up); call after ``loss.backward()``."""
        n_stepped = self._pending_samples
        self._epoch_samples += n_stepped
        self._pending_samples = 0
        if not self.in_warmup and self.mask.grad is not None:
            alpha = self._step_alpha if self._step_alpha is not None else self.alpha
            self._reduce_mask_grad()
            # Per-sample terms (SGD): lr * N / alpha, so one visit moves m_i by mask_lr/4 * (L_i - log L_i)
            # (straight-through slope alpha/4) whatever alpha is now: every visit of the schedule counts
            # alike in the final logits (with N/alpha^2 the early, small-alpha visits of the first
            # pruning epoch outweighed the last epoch's by alpha_final / alpha_init).
            k = self.num_samples / alpha
            if self._comp is None:  # binarize="exact": no compression term, no dense O(N) work
                if self.mask_optimizer_name == "sgd":
                    with torch.no_grad():
                        self.mask.add_(self.mask.grad, alpha=-self.mask_lr * k)
                else:
                    self.optimizer.step()
            else:
                self._step_with_compression(alpha, k)
            if self.binarize_mode != "threshold":
                self._since_project += n_stepped
                if self._since_project >= max(1, self._samples_per_epoch // self.PROJECTIONS_PER_EPOCH):
                    self._project()
        self._comp = None
        self.mask.grad = None
        self.global_step += 1

    def _step_with_compression(self, alpha: float, k: float) -> None:
        """binarize="threshold": the per-sample step plus the compression term's closed-form dense step."""
        lam, err = self._comp
        with torch.no_grad():
            # d/dm_i of lambda*(mean(sigmoid(alpha*m)) - c)^2 = 2*lambda*(mean - c)*alpha*w_i(1-w_i)/N
            ww = self._slope(self.mask, alpha)
            lam, err = lam.to(ww.device), err.to(ww.device)
            g_comp = (2.0 * lam * err * alpha / self.num_samples) * ww
            if self.mask_optimizer_name == "sgd":
                # Compression term: SGD in the sigmoid's input space z = alpha*m (lr * N / alpha^2); it
                # moves the mean weight by about -lr*gain*(mean - c) per step with
                # gain = 2*lambda*mean((w(1-w))^2); its step size is capped so that lr*gain <= 0.5
                # (no overshoot, no oscillation).
                gain = 2.0 * lam * (ww * ww).mean()
                lr_c = torch.clamp(0.5 / (gain + 1e-12), max=self.mask_lr)
                self.mask.add_(self.mask.grad * (-self.mask_lr * k) + g_comp * (-lr_c * k / alpha))
                return
        self.mask.grad.add_(g_comp)
        self.optimizer.step()

    @torch.no_grad()
    def _project(self) -> None:
        """Shift every logit by one constant so that exactly ``num_keep`` have ``m >= 0``.

        The shift is the ``num_keep``-th largest logit (on the device, no host sync). It runs after
        every step that completes another 1/PROJECTIONS_PER_EPOCH of the epoch's samples and at the
        end of every pruning epoch, not after every step: a k-th value over N entries costs ~2.6 ms at
        N = 60,000 on one CPU thread, too much for every 100 ms step. Between two projections the
        binarised ratio can only fall a little below the target (the per-sample steps all point
        down); ranks, and so the selection, do not depend on the timing.
        """
        self._since_project = 0
        kth = torch.kthvalue(self.mask.detach(), self.num_samples - self.num_keep + 1).values
        self.mask.sub_(kth)

    @property
    def last_terms(self) -> Dict[str, float]:
        """Loss terms and schedule values of the most recent :meth:`loss` call."""
        return {k: float(v) for k, v in self._last_terms.items()}

    def end_epoch(self) -> Dict[str, Any]:
        """Record the epoch's statistics in :attr:`history` and advance to the next epoch."""
        self._reduce_epoch()
        self._epoch_samples += self._pending_samples
        self._pending_samples = 0
        if not self.in_warmup and self.binarize_mode != "threshold":
            self._project()
        # warm-up trains with weight 1 for every sample
        soft = torch.ones(self.num_samples) if self.in_warmup else torch.sigmoid(self.alpha * self.mask.detach()).cpu()
        hist, _ = np.histogram(soft.numpy(), bins=20, range=(0.0, 1.0))
        rec = {
            "epoch": self.epoch,
            "warmup": self.in_warmup,
            "alpha": self._alpha_at(self.epoch, 0.0),  # at the epoch's start; it rises every step
            "alpha_end": self.alpha,
            "keep_ratio_threshold": 1.0 if self.in_warmup else float(self._binary_ratio()),
            "mean_weight": float(soft.mean()),
            "weight_histogram": hist.tolist(),
            **self._epoch_stats.summary(),
        }
        if "lambda" in self._last_terms:
            rec["lambda"] = float(self._last_terms["lambda"])
        self.history.append(rec)
        logger.info("AdaPruner epoch %d%s: alpha=%.3g kept(m>0)=%.4f mean weight=%.4f mean loss=%.4g", self.epoch,
                    " (warm-up)" if rec["warmup"] else "", rec["alpha"], rec["keep_ratio_threshold"],
                    rec["mean_weight"], rec.get("mean_loss", float("nan")))
        self.set_epoch(self.epoch + 1)
        return rec

    @property
    def finished(self) -> bool:
        return self.epoch >= self.epochs

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        return {
            "mask": self.mask.detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "epoch_samples": self._epoch_samples + self._pending_samples,
            "history": list(self.history),
            "seen": self._seen.cpu().clone(),
            "params": self.params(),
            "num_samples": self.num_samples,
        }

    def load_state_dict(self, state: Dict[str, Any], strict: bool = True) -> None:
        if int(state["num_samples"]) != self.num_samples:
            raise PruneDataError(f"checkpoint has a mask for {state['num_samples']} samples, this pruner has "
                                 f"{self.num_samples}")
        now = self.params()
        if strict and state.get("params") and state["params"] != now:
            diff = {k: (state["params"].get(k), now.get(k)) for k in set(state["params"]) | set(now)
                    if state["params"].get(k) != now.get(k)}
            raise PruneDataError(f"checkpoint was made with other AdaPruner parameters: {diff} (checkpoint, now); "
                                 "build the pruner with the checkpoint's parameters, or start a new run without "
                                 "--resume")
        with torch.no_grad():
            self.mask.copy_(state["mask"].to(self.mask.device))
        if self.optimizer is not None and state.get("optimizer"):
            self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self._epoch_samples = int(state.get("epoch_samples", 0))
        self._pending_samples = 0
        self.history = list(state["history"])
        self._seen = state["seen"].to(self.mask.device).clone()
        self._epoch_stats = _EpochStats()


class _EpochStats:
    """Running per-epoch sums (mean loss, weighted fraction) without storing per-step tensors."""

    def __init__(self) -> None:
        self.n, self.loss_sum, self.w_sum, self.w_n = 0, 0.0, 0.0, 0  # the sums become tensors on the device

    def add(self, losses: torch.Tensor, w: Optional[torch.Tensor]) -> None:
        self.n += int(losses.numel())
        self.loss_sum = self.loss_sum + losses.sum()
        if w is not None:
            self.w_sum = self.w_sum + w.sum()
            self.w_n += int(w.numel())

    def summary(self) -> Dict[str, float]:
        out = {"mean_loss": float(self.loss_sum) / self.n if self.n else float("nan"), "samples": self.n}
        if self.w_n:
            out["mean_batch_weight"] = float(self.w_sum) / self.w_n
        return out
