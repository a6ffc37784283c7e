"""The result of a pruning run: the final ranking, the binarised mask and its selection file."""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, Optional

import numpy as np

from ..errors import PruneDataError
from ..identity import dataset_fingerprint
from ..selection import Selection

logger = logging.getLogger("prunedata.adapruner")


class MaskResult:
    """Ranking, binarisation and selection of :class:`~prunedata.adapruner.AdaPruner`'s mask."""

    def ranking(self) -> np.ndarray:
        """Dataset indices from the largest final logit to the smallest; ties in a seeded random order."""
        m = self.mask.detach().cpu().double().numpy()
        tie = np.random.default_rng(self.seed).permutation(self.num_samples)
        return np.lexsort((tie, -m))

    def binarize(self) -> np.ndarray:
        """Final boolean keep-mask: the top of :meth:`ranking`, as many as the ``binarize`` rule says
        (see :class:`~prunedata.adapruner.AdaPruner`); :attr:`count_rule` says afterwards which."""
        m = self.mask.detach().cpu().double().numpy()
        n = self.num_samples
        order = self.ranking()
        lo = max(1, int(math.ceil((self.keep_ratio - self.tolerance) * n - 1e-9)))
        hi = min(n, int(math.floor((self.keep_ratio + self.tolerance) * n + 1e-9)))
        if self.binarize_mode == "exact":
            k, rule = self.num_keep, "exact"
        elif self.binarize_mode == "band":
            s, hi_gap = m[order], min(hi, n - 1)
            gaps = s[lo - 1:hi_gap] - s[lo:hi_gap + 1]  # gap after the k-th largest, k = lo..hi_gap
            k, rule = (lo + int(np.argmax(gaps)) if hi_gap >= lo else lo), "largest-gap"
        else:
            k_thr = int((m >= 0).sum())
            k = max(1, min(n, min(max(k_thr, lo), hi)))
            rule = "threshold" if k == k_thr else "clipped-to-band"
            if k != k_thr:
                logger.warning("AdaPruner: thresholded mask keeps %.4f, outside keep_ratio %.3f +- %.3f; keeping the "
                               "%d samples with the largest mask logits instead (binarize='exact' keeps exactly "
                               "round(keep_ratio*N))", k_thr / n, self.keep_ratio, self.tolerance, k)
        self._count_rule = rule
        keep = np.zeros(n, dtype=bool)
        keep[order[:k]] = True
        return keep

    @property
    def count_rule(self) -> Optional[str]:
        """How the last :meth:`binarize` reached its count: "exact" (``round(keep_ratio*N)``),
        "largest-gap" (inside the band), "threshold" (the mask's own ``m >= 0`` count, inside the band)
        or "clipped-to-band"."""
        return self._count_rule

    def params(self) -> Dict[str, Any]:
        return {
            "keep_ratio": self.keep_ratio, "epochs": self.epochs, "warmup_epochs": self.warmup_epochs,
            "alpha_init": self.alpha_init, "alpha_final": self.alpha_final, "scale": self.scale,
            "tolerance": self.tolerance, "logit_clip": self.logit_clip, "mask_lr": self.mask_lr,
            "mask_optimizer": self.mask_optimizer_name, "mask_init": self.mask_init, "loss_eps": self.loss_eps,
            "task_weight": self.task_weight, "binarize": self.binarize_mode, "straight_through": self.straight_through,
            "seed": self.seed,
        }

    def selection(self, dataset: Any = None, *, fingerprint: Optional[str] = None,
                  extra_params: Optional[Dict[str, Any]] = None, method: str = "adapruner") -> Selection:
        """The binarised mask as a :class:`~prunedata.selection.Selection` (scores = mask logits);
        ``params["count_rule"]`` records how the count was reached (:attr:`count_rule`)."""
        if dataset is not None and len(dataset) != self.num_samples:
            raise PruneDataError(f"pruner has {self.num_samples} mask entries but the dataset has {len(dataset)} "
                                 "samples")
        if not self.finished:
            logger.warning("AdaPruner.selection() called after %d of %d epochs", self.epoch, self.epochs)
        keep = self.binarize()
        m = self.mask.detach().cpu().double().numpy()
        thr = float((m >= 0).mean())
        if fingerprint is None and dataset is not None:
            fingerprint = dataset_fingerprint(dataset)
        params = {**self.params(), "count_rule": self._count_rule, **(extra_params or {})}
        metrics = {"keep_ratio": float(keep.mean()), "keep_ratio_threshold": thr,
                   "within_tolerance_by_threshold": abs(thr - self.keep_ratio) <= self.tolerance + 1e-12,
                   "count_rule": self._count_rule, "epochs_run": self.epoch,
                   "never_seen": int((~self._seen).sum().cpu())}
        sel = Selection.from_mask(keep, method=method, params=params, fingerprint=fingerprint, scores=m,
                                  score_name="mask_logit", metrics=metrics)
        sel.extra["history"] = self.history
        return sel
