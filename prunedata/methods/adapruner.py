"""AdaPruner as a registered selection method (joint training of a proxy model and the mask)."""
from __future__ import annotations

import inspect
from typing import Any, Optional

from ..adapruner import AdaPruner
from ..errors import OptionError, PruneDataError
from ..selection import Selection
from ..training import train_adapruner
from .registry import MethodConfig, check_options, register_method
from .scoring import dataset_labels, keep_top_k


@register_method("adapruner")
def adapruner_method(dataset: Any, keep_ratio: float, *, config: MethodConfig, warmup_epochs: Optional[int] = None,
                     checkpoint: Optional[str] = None, resume: bool = False, **pruner_kw) -> Selection:
    """Train a proxy model and the mask jointly; the selection is the binarised mask.

    With ``config.class_balanced`` the number of kept samples is still the one AdaPruner's
    binarisation chose, but it is split over the classes in proportion to their sizes and each class
    keeps its samples with the largest mask logits (the mask alone may prune whole easy classes).
    """
    fixed = ("self", "num_samples", "keep_ratio", "epochs", "warmup_epochs", "device")
    check_options("adapruner", adapruner_method, pruner_kw,
                  extra_known=[n for n in inspect.signature(AdaPruner.__init__).parameters if n not in fixed])
    epochs = max(2, config.epochs)
    warm = warmup_epochs if warmup_epochs is not None else max(1, epochs // 4)
    pruner_kw.setdefault("seed", config.seed)  # seeds the tie-break of the final ranking
    try:
        pruner = AdaPruner(len(dataset), keep_ratio, epochs=epochs, warmup_epochs=warm, **pruner_kw)
    except (TypeError, ValueError) as e:
        if isinstance(e, PruneDataError):
            raise
        given = {"warmup_epochs": warmup_epochs, **pruner_kw}
        raise OptionError(f"bad value among the adapruner options {given}: {e}; give numbers where numbers are "
                          "expected (e.g. --option warmup_epochs=1 --option scale=100)") from None
    model = config.make_model()
    train_adapruner(model, dataset, pruner, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                    device=config.device, num_workers=config.num_workers, checkpoint=checkpoint, resume=resume,
                    show_progress=config.show_progress)
    sel = pruner.selection(dataset, extra_params={"proxy": config.as_params(),
                                                  "class_balanced": bool(config.class_balanced)})
    if not config.class_balanced:
        return sel
    n = sel.dataset_size
    kept = keep_top_k(sel.scores, sel.num_kept / n, labels=dataset_labels(dataset), class_balanced=True,
                      seed=config.seed)
    metrics = dict(sel.metrics)
    metrics["kept_by_mask_alone"] = int(sel.num_kept - len(set(kept.tolist()) - set(sel.kept.tolist())))
    return Selection(kept=kept, dataset_size=n, method=sel.method, params=sel.params, fingerprint=sel.fingerprint,
                     scores=sel.scores, score_name=sel.score_name, metrics=metrics, extra=sel.extra)
