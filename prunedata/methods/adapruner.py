"""AdaPruner as a registered selection method (joint training of a proxy model and the mask)."""
from __future__ import annotations

from typing import Any, Optional

from ..adapruner import AdaPruner
from ..selection import Selection
from ..training import train_adapruner
from .registry import MethodConfig, register_method


@register_method("adapruner", "AdaPruner: learnable per-sample mask trained jointly with the model")
def adapruner_method(dataset: Any, keep_ratio: float, *, config: MethodConfig, warmup_epochs: Optional[int] = None,
                     checkpoint: Optional[str] = None, resume: bool = False, **pruner_kw) -> Selection:
    epochs = max(2, config.epochs)
    warm = warmup_epochs if warmup_epochs is not None else max(1, epochs // 4)
    pruner = AdaPruner(len(dataset), keep_ratio, epochs=epochs, warmup_epochs=warm, **pruner_kw)
    model = config.make_model()
    train_adapruner(model, dataset, pruner, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                    device=config.device, num_workers=config.num_workers, checkpoint=checkpoint, resume=resume,
                    show_progress=config.show_progress)
    sel = pruner.selection(dataset, extra_params={"proxy": config.as_params()})
    if config.class_balanced:
        sel.params["class_balanced_note"] = "AdaPruner learns the class balance; class_balanced is ignored"
    return sel
