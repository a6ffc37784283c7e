"""The mask shared by the ranks of a process group: gradient all-reduce, epoch statistics, consistency."""
from __future__ import annotations

import logging
import torch

logger = logging.getLogger("prunedata.adapruner")


class MaskSync:
    """What :class:`~prunedata.adapruner.AdaPruner` does when ranks share its mask (``process_group``)."""

    def _reduce_mask_grad(self) -> None:
        """Sum the mask gradient over the ranks of the process group."""
        if self.world_size > 1 and self.mask.grad is not None:
            from ..distributed import all_reduce

            all_reduce(self.mask.grad, group=self._group(),
                       what=f"all-reduce of the mask gradient (epoch {self.epoch}, step {self.global_step})")

    def sync(self) -> float:
        """Check that every rank's mask equals rank 0's; returns the largest difference (then removed)."""
        if self.world_size <= 1:
            return 0.0
        import torch.distributed as dist

        from ..distributed import DistributedError, all_reduce, collective_guard

        ref = self.mask.detach().clone()
        src = dist.get_global_rank(self._group(), 0) if self._group() is not None else 0
        with collective_guard(f"mask consistency check after epoch {self.epoch}"):
            dist.broadcast(ref, src=src, group=self._group())
        d = float((ref - self.mask.detach()).abs().max()) if ref.numel() else 0.0
        diff = torch.tensor([d], dtype=torch.float64)
        all_reduce(diff, op=dist.ReduceOp.MAX, group=self._group(), what="mask consistency check")
        d = float(diff[0])
        if d > self.sync_tolerance:
            raise DistributedError(f"the AdaPruner masks of the ranks differ by up to {d:.3g} after epoch "
                                   f"{self.epoch}: the ranks did not run the same steps. Every rank must call loss(), "
                                   "backward() and step() once per batch, with the same number of batches (use "
                                   "AdaPrunerSampler, which pads the shards to equal length) and the same AdaPruner "
                                   "parameters")
        if d > 0:
            with torch.no_grad():
                self.mask.copy_(ref)
        return d

    def _reduce_epoch(self) -> None:
        """Sum the epoch's statistics and the seen samples over the ranks; check the masks agree."""
        if self.world_size <= 1:
            return
        from ..distributed import all_reduce

        st = self._epoch_stats
        t = torch.tensor([float(st.n), float(st.loss_sum), float(st.w_sum), float(st.w_n)], dtype=torch.float64)
        all_reduce(t, group=self._group(), what=f"sum of epoch statistics (epoch {self.epoch})")
        st.n, st.loss_sum, st.w_sum, st.w_n = int(t[0]), float(t[1]), float(t[2]), int(t[3])
        seen = self._seen.to(torch.int32)
        all_reduce(seen, group=self._group(), what="union of seen samples")
        self._seen = seen > 0
        drift = self.sync()
        if drift:
            logger.debug("mask drift across ranks after epoch %d: %.3g (removed)", self.epoch, drift)
