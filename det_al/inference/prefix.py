"""The deterministic prefix of a batch: what every stochastic pass shares.

:func:`compute_prefix` runs everything upstream of the first dropout site once per image batch
(see :mod:`det_al.inference.passes` for the split of each family); :mod:`det_al.inference.suffix`
and :mod:`det_al.inference.postprocess` read the :class:`Prefix` it returns.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.rpn import concat_box_prediction_layers


@dataclass
class Prefix:
    """What the deterministic prefix gives for a batch of B images.

    ``site`` is the input of the first dropout site: R-CNN box features ``[R, D]`` (rows of
    image ``i`` = ``rows[i]``); RetinaNet/FCOS a pair (classification tower outputs, regression
    tower outputs), one ``[B, C, H, W]`` tensor per level each; SSD the feature maps.
    """

    family: str
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    padded_size: tuple[int, int]
    features: "OrderedDict[str, Tensor]"
    site: Any
    rows: list[int]
    references: list[Tensor]  # proposals (R-CNN) or anchors (one-stage) per image
    shared_masks: "SharedMasks | None" = None
    objectness: list[Tensor] | None = None  # R-CNN: the RPN probability of each proposal
    tail_anchors: list[list[Tensor]] | None = None  # restricted tail: [B][level] anchor indices
    certified: list[list[Any]] | None = None  # RetinaNet with channel groups: [B][level] certified.Level


@dataclass
class SharedMasks:
    """The deterministic detections' mask features of a batch (``passes.masks: shared``).

    ``boxes[i]`` ``[N_i, 4]`` in the prefix's (resized) image coordinates; ``features[i]``
    ``[N_i, D, M, M]``: the input of the mask predictor's final 1x1 ``mask_fcn_logits``.
    """

    boxes: list[Tensor]
    features: list[Tensor]


def compute_prefix(model: nn.Module, images: Sequence[Tensor], family: str) -> Prefix:
    """Run the deterministic upstream part for ``images`` (float ``[3, H, W]`` in [0, 1])."""
    original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    image_list, _ = model.transform(list(images))
    features = model.backbone(image_list.tensors)
    if isinstance(features, Tensor):
        features = OrderedDict([("0", features)])
    padded = (int(image_list.tensors.shape[-2]), int(image_list.tensors.shape[-1]))
    sizes = [(int(h), int(w)) for h, w in image_list.image_sizes]
    levels = list(features.values())
    if family == "rcnn":
        proposals, objectness = _rpn(model.rpn, image_list, features)
        box_features = model.roi_heads.box_roi_pool(features, proposals, image_list.image_sizes)
        box_features = model.roi_heads.box_head(box_features)
        return Prefix(family, sizes, original_sizes, padded, features, box_features,
                      [int(p.shape[0]) for p in proposals], proposals, objectness=objectness)
    anchors = model.anchor_generator(image_list, levels)
    if family in ("retinanet", "fcos"):
        cls_tower = [model.head.classification_head.conv(f) for f in levels]
        reg_tower = [model.head.regression_head.conv(f) for f in levels]
        return Prefix(family, sizes, original_sizes, padded, features, (cls_tower, reg_tower),
                      [1] * len(images), anchors)
    if family == "ssd":
        return Prefix(family, sizes, original_sizes, padded, features, levels, [1] * len(images), anchors)
    raise ValueError(f"unknown model family {family!r}")


def _rpn(rpn: nn.Module, image_list, features: "OrderedDict[str, Tensor]") -> tuple[list[Tensor], list[Tensor]]:
    """``RegionProposalNetwork.forward`` at inference, keeping what it drops: each proposal's
    objectness probability (``filter_proposals``' scores). Returns ``(proposals [R_i, 4],
    objectness [R_i])`` per image."""
    levels = list(features.values())
    objectness, deltas = rpn.head(levels)
    anchors = rpn.anchor_generator(image_list, levels)
    per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
    boxes, scores = rpn.filter_proposals(proposals, objectness, image_list.image_sizes, per_level)
    return boxes, scores


def embeddings(prefix: Prefix) -> Tensor:
    """``[B, D]``: mean of the coarsest feature map over each image's own (unpadded) area."""
    coarsest = list(prefix.features.values())[-1]
    out = []
    ph, pw = prefix.padded_size
    h_map, w_map = coarsest.shape[-2:]
    for i, (h, w) in enumerate(prefix.image_sizes):
        rows = max(1, min(h_map, -(-h * h_map // ph)))
        cols = max(1, min(w_map, -(-w * w_map // pw)))
        out.append(coarsest[i, :, :rows, :cols].float().mean(dim=(-2, -1)))
    return torch.stack(out)
