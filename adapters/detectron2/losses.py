"""Per-image detection losses from a Detectron2 model.

Detectron2 models return batch-level losses (each a mean or a sum over the whole batch divided by
a batch-level normaliser). AdaPruner needs one loss per image. Two ways, same definition:

``l_i`` = the loss dict Detectron2 would return for a batch holding only image ``i`` (given the
same proposals and sampled anchors/ROIs), summed over its terms.

* ``mode="heads"`` (Faster R-CNN style ``GeneralizedRCNN`` with ``RPN`` and ``StandardROIHeads``/
  ``Res5ROIHeads``, box head only): ONE forward pass of backbone, RPN and box head over the whole
  batch, exactly as ``GeneralizedRCNN.forward`` runs it; then the model's own loss functions
  (``RPN.losses``, ``FastRCNNOutputLayers.losses``) are called once per image on that image's
  slice of the predictions. Nothing is monkeypatched and the loss code is Detectron2's, so box
  loss types and loss weights from the config apply. The RPN terms are an exact decomposition
  (``mean_i l_i`` equals Detectron2's batch loss); the ROI terms are too whenever every image
  samples the same number of ROIs (the usual case: ``ROI_HEADS.BATCH_SIZE_PER_IMAGE`` each).
* ``mode="microbatch"``: one forward per image (``model([d])``); works for any model that returns
  a loss dict (RetinaNet, Mask R-CNN, ...), at the price of B forward passes of batch size 1,
  and BatchNorm then normalises each image on its own.
* ``mode="auto"``: "heads" when the model supports it and has no BatchNorm layer normalising with
  batch statistics (trainable ``BN``/``SyncBN`` in training mode), otherwise "microbatch". Why: in
  "heads" mode the images of a batch interact through the batch statistics, so an image of weight 0
  still shapes the normalisation of the others -- measured, it changes the gradient by 17-24%
  (GroupNorm, FrozenBN and "microbatch": <= 6e-7); in "microbatch" weight 0 means no gradient and the
  BatchNorm running statistics still see every image. Asking for "heads" with BatchNorm is allowed,
  with a warning. :func:`resolve_mode` tells which mode a model gets.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Set

import torch

from prunedata.errors import PruneDataError

from ._require import require_detectron2

require_detectron2()

from detectron2.modeling.meta_arch.rcnn import GeneralizedRCNN  # noqa: E402
from detectron2.modeling.proposal_generator.rpn import RPN  # noqa: E402
from detectron2.modeling.roi_heads.roi_heads import Res5ROIHeads, StandardROIHeads  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["PerImageLosses", "per_image_losses", "supports_heads_mode", "batchnorm_layers", "resolve_mode", "MODES"]

MODES = ("auto", "heads", "microbatch")


@dataclass
class PerImageLosses:
    """``losses``: (B,) per-image total losses (with grad); ``components``: term name -> (B,)."""

    losses: torch.Tensor
    components: Dict[str, torch.Tensor]
    mode: str

    def batch_loss_dict(self) -> Dict[str, torch.Tensor]:
        """Mean over images of each term (Detectron2's batch losses under uniform weights), detached."""
        return {k: v.detach().mean() for k, v in self.components.items()}


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


def supports_heads_mode(model: Any) -> str:
    """Empty string when ``mode='heads'`` works for ``model``, else the reason it does not."""
    m = _unwrap(model)
    if not isinstance(m, GeneralizedRCNN):
        return f"the model is a {type(m).__name__}, not a GeneralizedRCNN"
    pg = m.proposal_generator
    if pg is not None and (type(pg).forward is not RPN.forward or type(pg).losses is not RPN.losses):
        return f"the proposal generator {type(pg).__name__} is not Detectron2's standard RPN"
    rh = m.roi_heads
    if isinstance(rh, StandardROIHeads):
        if type(rh).forward is not StandardROIHeads.forward or type(rh)._forward_box is not StandardROIHeads._forward_box:
            return f"ROI heads {type(rh).__name__} override the standard forward (e.g. cascade heads)"
        if getattr(rh, "mask_on", False) or getattr(rh, "keypoint_on", False):
            return "mask/keypoint heads are on (their losses do not split per image)"
    elif isinstance(rh, Res5ROIHeads):
        if type(rh).forward is not Res5ROIHeads.forward:
            return f"ROI heads {type(rh).__name__} override the standard forward"
        if getattr(rh, "mask_on", False):
            return "the mask head is on (its loss does not split per image)"
    else:
        return f"ROI heads {type(rh).__name__} are not StandardROIHeads/Res5ROIHeads"
    if not hasattr(rh.box_predictor, "losses"):
        return "the box predictor has no losses() method"
    return ""


def batchnorm_layers(model: Any) -> List[str]:
    """Names of the BatchNorm layers of ``model`` that normalise with batch statistics (training mode)."""
    return [n for n, m in _unwrap(model).named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]


_WARNED: Set[int] = set()  # ids of the models whose BatchNorm layers were reported once


def resolve_mode(model: Any, mode: str = "auto") -> str:
    """The per-image loss mode ``mode`` means for ``model``: "heads" or "microbatch" (see the module docstring)."""
    if mode not in MODES:
        raise PruneDataError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "microbatch":
        return mode
    reason = supports_heads_mode(model)
    if reason and mode == "heads":
        raise PruneDataError(f"mode='heads' is not available: {reason}. Use mode='microbatch' (any model).")
    if reason:
        logger.debug("per_image_losses: using micro-batches because %s", reason)
        return "microbatch"
    bn = batchnorm_layers(model)
    if bn and id(model) not in _WARNED:
        _WARNED.add(id(model))
        if mode == "heads":
            logger.warning("per-image losses in mode='heads' with %d BatchNorm layer(s) in training mode (e.g. %s): "
                           "an image of weight 0 still changes the others' gradients through the batch statistics; "
                           "use mode='auto'/'microbatch', GroupNorm or FrozenBN for 'weight 0 = no gradient'",
                           len(bn), bn[0])
        else:
            logger.info("per-image losses: mode 'microbatch' (one forward per image) because %d BatchNorm layer(s) "
                        "normalise with batch statistics (e.g. %s); 'heads' would let weight-0 images change the "
                        "gradient", len(bn), bn[0])
    return "heads" if mode == "heads" or not bn else "microbatch"


def _stack(per_image: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    keys = list(per_image[0].keys())
    for d in per_image[1:]:
        if list(d.keys()) != keys:
            raise PruneDataError(f"images returned different loss terms: {keys} vs {list(d.keys())}")
    return {k: torch.stack([d[k].reshape(()) for d in per_image]) for k in keys}


def _heads_losses(model: GeneralizedRCNN, batched_inputs: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
    images = model.preprocess_image(batched_inputs)
    if "instances" not in batched_inputs[0]:
        raise PruneDataError("training inputs carry no 'instances' (ground truth); use a training mapper "
                             "(DatasetMapper(cfg, is_train=True))")
    gt_instances = [x["instances"].to(model.device) for x in batched_inputs]
    features = model.backbone(images.tensor)
    n = len(batched_inputs)
    per_image: List[Dict[str, torch.Tensor]] = [dict() for _ in range(n)]

    # --- RPN, as RPN.forward; loss per image through RPN.losses on the image's slice
    rpn = model.proposal_generator
    if rpn is not None:
        feats = [features[f] for f in rpn.in_features]
        anchors = rpn.anchor_generator(feats)
        logits, deltas = rpn.rpn_head(feats)
        logits = [s.permute(0, 2, 3, 1).flatten(1) for s in logits]
        deltas = [
            x.view(x.shape[0], -1, rpn.anchor_generator.box_dim, x.shape[-2], x.shape[-1])
            .permute(0, 3, 4, 1, 2).flatten(1, -2)
            for x in deltas
        ]
        gt_labels, gt_boxes = rpn.label_and_sample_anchors(anchors, gt_instances)
        for i in range(n):
            per_image[i].update(rpn.losses(anchors, [s[i:i + 1] for s in logits], [gt_labels[i]],
                                           [d[i:i + 1] for d in deltas], [gt_boxes[i]]))
        proposals = rpn.predict_proposals(anchors, logits, deltas, images.image_sizes)
    else:
        if "proposals" not in batched_inputs[0]:
            raise PruneDataError("the model has no proposal generator and the inputs carry no 'proposals'")
        proposals = [x["proposals"].to(model.device) for x in batched_inputs]

    # --- ROI heads, as StandardROIHeads._forward_box / Res5ROIHeads.forward
    rh = model.roi_heads
    proposals = rh.label_and_sample_proposals(proposals, gt_instances)
    boxes = [x.proposal_boxes for x in proposals]
    if isinstance(rh, Res5ROIHeads):
        box_features = rh._shared_roi_transform([features[f] for f in rh.in_features], boxes)
        predictions = rh.box_predictor(box_features.mean(dim=[2, 3]))
    else:
        box_features = rh.box_pooler([features[f] for f in rh.box_in_features], boxes)
        box_features = rh.box_head(box_features)
        predictions = rh.box_predictor(box_features)
    del box_features
    scores, box_deltas = predictions[0], predictions[1]
    start = 0
    for i, p in enumerate(proposals):
        end = start + len(p)
        per_image[i].update(rh.box_predictor.losses((scores[start:end], box_deltas[start:end]), [p]))
        start = end
    if start != scores.shape[0]:
        raise PruneDataError(f"box predictor returned {scores.shape[0]} rows for {start} proposals")
    return _stack(per_image)


def _microbatch_losses(model: Any, batched_inputs: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
    per_image = []
    for d in batched_inputs:
        out = model([d])
        if isinstance(out, torch.Tensor):
            out = {"total_loss": out}
        if not isinstance(out, dict):
            raise PruneDataError(f"the model returned a {type(out).__name__} in training mode; expected a dict of "
                                 "losses (is the model in eval mode?)")
        per_image.append(out)
    return _stack(per_image)


def per_image_losses(model: Any, batched_inputs: Sequence[Dict[str, Any]], mode: str = "auto") -> PerImageLosses:
    """Per-image losses of a Detectron2 model in training mode (see the module docstring)."""
    mode = resolve_mode(model, mode)
    if not batched_inputs:
        raise PruneDataError("empty batch")
    if not getattr(model, "training", True):
        raise PruneDataError("the model is in eval mode; per-image training losses need model.train()")
    comps = (_heads_losses(_unwrap(model), batched_inputs) if mode == "heads"
             else _microbatch_losses(model, batched_inputs))
    total = torch.stack(list(comps.values())).sum(0)
    return PerImageLosses(losses=total, components=comps, mode=mode)
