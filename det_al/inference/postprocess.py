"""Per-pass post-processing of the stochastic suffix's raw outputs, family by family.

Each function does what torchvision's ``postprocess_detections`` does for its family (score
threshold, top-k, box decoding, clipping, small-box removal, class-wise NMS, the per-image cap),
for P passes of B images at once (rows of pass ``p``, image ``i`` at block ``p * B + i``), and
keeps the full class-probability vector of the proposal/anchor each detection came from. They
read the model's thresholds and box coder; they never run a module (see :mod:`det_al.inference.passes`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import boxes as box_ops

from det_al.inference.prefix import Prefix


@dataclass
class Raw:
    """One pass over one image before mapping to the original size."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    probs: Tensor
    kind: str
    masks: Tensor | None = None


def rcnn_postprocess(model: nn.Module, prefix: Prefix, class_logits: Tensor, box_regression: Tensor,
                      p_count: int, probs: Tensor | None = None) -> list[list[Raw]]:
    """``RoIHeads.postprocess_detections`` per pass and image, keeping softmax rows.

    ``probs``: ``softmax(class_logits, -1)`` when the caller has it already."""
    rh = model.roi_heads
    proposals = prefix.references
    num_classes = class_logits.shape[-1]
    pred_boxes = rh.box_coder.decode(box_regression, list(proposals) * p_count)
    pred_scores = F.softmax(class_logits, -1) if probs is None else probs
    splits = prefix.rows * p_count
    boxes_list = pred_boxes.split(splits, 0)
    scores_list = pred_scores.split(splits, 0)
    device = class_logits.device
    out: list[list[Raw]] = []
    b_count = len(prefix.rows)
    for p in range(p_count):
        row = []
        for i in range(b_count):
            boxes, probs = boxes_list[p * b_count + i], scores_list[p * b_count + i]
            boxes = box_ops.clip_boxes_to_image(boxes, prefix.image_sizes[i])
            n = boxes.shape[0]
            boxes = boxes[:, 1:].reshape(-1, 4)
            scores = probs[:, 1:].reshape(-1)
            labels = torch.arange(1, num_classes, device=device).repeat(n)
            source = torch.arange(n, device=device).repeat_interleave(num_classes - 1)
            inds = torch.where(scores > rh.score_thresh)[0]
            boxes, scores, labels, source = boxes[inds], scores[inds], labels[inds], source[inds]
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels, source = boxes[keep], scores[keep], labels[keep], source[keep]
            keep = box_ops.batched_nms(boxes, scores, labels, rh.nms_thresh)[: rh.detections_per_img]
            row.append(Raw(boxes[keep], scores[keep], labels[keep], probs[source[keep]], "softmax"))
        out.append(row)
    return out


def _positions(flat: Tensor, anchors: int, columns: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Indices into a head output's native ``[A * K, H, W]`` layout -> (anchor index, column).

    torchvision's heads permute their outputs to ``[H * W * A, K]`` before post-processing;
    the anchor index is the row of that layout, ``(h * W + w) * A + a``. Sorting by the
    permuted flat index ``anchor * K + k`` gives the order torchvision's ``torch.where`` does.
    """
    anchor, k, _ = sorted_positions(flat, anchors, columns, height * width)
    return anchor, k


def sorted_positions(flat: Tensor, anchors: int, columns: int, positions: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_positions` for a map of ``positions`` (``H * W``), and the order it sorted ``flat`` in."""
    channel, position = flat // positions, flat % positions
    a, k = channel // columns, channel % columns
    anchor = position * anchors + a
    order = torch.argsort(anchor * columns + k)
    return anchor[order], k[order], order


def _gather_anchor_rows(x: Tensor, anchor: Tensor, anchors: int) -> Tensor:
    """``[n, K]``: the rows ``anchor`` of ``x`` (``[A * K, H, W]``) in torchvision's ``[H * W * A, K]``."""
    _, height, width = x.shape
    xv = x.view(anchors, -1, height * width)
    return xv[anchor % anchors, :, torch.div(anchor, anchors, rounding_mode="floor")]


def dense_postprocess(model: nn.Module, prefix: Prefix, cls: list[Tensor], reg: list[Tensor],
                       ctr: list[Tensor] | None, p_count: int) -> list[list[Raw]]:
    """RetinaNet / FCOS ``postprocess_detections`` per pass and image, keeping per-class vectors.

    ``cls``/``reg``/``ctr`` are the heads' outputs per level in their native ``[P * B, A * K,
    H, W]`` layout: thresholding there and sorting the few survivors into torchvision's order
    saves permuting every pass's ~A * K * H * W logits.
    """
    b_count = len(prefix.rows)
    num_classes = model.head.classification_head.num_classes
    sizes = [int(level.shape[1]) // num_classes * level.shape[2] * level.shape[3] for level in cls]
    out: list[list[Raw]] = []
    for p in range(p_count):
        row = []
        for i in range(b_count):
            n = p * b_count + i
            anchors = prefix.references[i].split(sizes)
            image_boxes, image_scores, image_labels, image_probs = [], [], [], []
            for level in range(len(cls)):
                logits = cls[level][n].float()  # [A * K, H, W]
                a_count = logits.shape[0] // num_classes
                height, width = logits.shape[-2:]
                if ctr is None:
                    # sigmoid(x) > t  <=>  x > logit(t): threshold the logits, squash only the kept
                    flat = torch.where(logits.flatten() > logit_of(model.score_thresh))[0]
                    anchor_idxs, labels = _positions(flat, a_count, num_classes, height, width)
                    kept = _gather_anchor_rows(logits, anchor_idxs, a_count)
                    scores = torch.sigmoid(kept.gather(1, labels[:, None])[:, 0])
                else:
                    centerness = ctr[level][n].float()  # [A, H, W]
                    probs = torch.sqrt(torch.sigmoid(logits.view(a_count, num_classes, height, width))
                                       * torch.sigmoid(centerness)[:, None])
                    probs = probs.view(-1, height, width)
                    flat = torch.where(probs.flatten() > model.score_thresh)[0]
                    anchor_idxs, labels = _positions(flat, a_count, num_classes, height, width)
                    kept = _gather_anchor_rows(probs, anchor_idxs, a_count)
                    scores = kept.gather(1, labels[:, None])[:, 0]
                num_topk = min(model.topk_candidates, int(scores.shape[0]))
                scores, idxs = scores.topk(num_topk)
                anchor_idxs, labels, kept = anchor_idxs[idxs], labels[idxs], kept[idxs]
                deltas = _gather_anchor_rows(reg[level][n].float(), anchor_idxs, a_count)
                refs = anchors[level][anchor_idxs]
                if ctr is None:
                    boxes = model.box_coder.decode_single(deltas, refs)
                else:
                    boxes = model.box_coder.decode(deltas, refs)
                boxes = box_ops.clip_boxes_to_image(boxes, prefix.image_sizes[i])
                image_boxes.append(boxes)
                image_scores.append(scores)
                image_labels.append(labels)
                image_probs.append(torch.sigmoid(kept) if ctr is None else kept)
            boxes, scores = torch.cat(image_boxes), torch.cat(image_scores)
            labels, probs = torch.cat(image_labels), torch.cat(image_probs)
            keep = box_ops.batched_nms(boxes, scores, labels, model.nms_thresh)[: model.detections_per_img]
            row.append(Raw(boxes[keep], scores[keep], labels[keep], probs[keep], "sigmoid"))
        out.append(row)
    return out


def logit_of(p: float) -> float:
    """The logit of a probability threshold (``-inf`` for 0, ``inf`` for 1)."""
    if p <= 0.0:
        return float("-inf")
    if p >= 1.0:
        return float("inf")
    return math.log(p / (1.0 - p))


def ssd_postprocess(model: nn.Module, prefix: Prefix, head_outputs: dict[str, Tensor],
                     p_count: int) -> list[list[Raw]]:
    """SSD ``postprocess_detections`` per pass and image, keeping each anchor's softmax row."""
    b_count = len(prefix.rows)
    all_probs = F.softmax(head_outputs["cls_logits"].float(), dim=-1)
    regression = head_outputs["bbox_regression"].float()
    return [[ssd_detections(model, all_probs[p * b_count + i], regression[p * b_count + i], prefix.references[i],
                            prefix.image_sizes[i]) for i in range(b_count)] for p in range(p_count)]


def ssd_detections(model: nn.Module, probs: Tensor, deltas: Tensor, anchors: Tensor,
                   image_size: tuple[int, int]) -> Raw:
    """torchvision's SSD ``postprocess_detections`` for one image: ``probs`` ``[R, K]`` softmax
    rows, ``deltas`` ``[R, 4]``, ``anchors`` ``[R, 4]`` (all the image's, or a subset in anchor order)."""
    boxes = model.box_coder.decode_single(deltas, anchors)
    boxes = box_ops.clip_boxes_to_image(boxes, image_size)
    # torchvision loops over the classes: per class the rows above the threshold, its top
    # topk_candidates by score, concatenated class by class. The same in one sort (class, then
    # score descending) and a rank within the class, without 90 small steps per pass.
    sources, labels = torch.where(probs[:, 1:] > model.score_thresh)
    scores = probs[sources, labels + 1]
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(labels[order], stable=True)]
    sources, labels, scores = sources[order], labels[order] + 1, scores[order]
    counts = torch.bincount(labels, minlength=probs.shape[-1])
    starts = counts.cumsum(0) - counts
    top = torch.arange(labels.shape[0], device=labels.device) - starts[labels] < model.topk_candidates
    sources, labels, scores = sources[top], labels[top], scores[top]
    boxes = boxes[sources]
    keep = box_ops.batched_nms(boxes, scores, labels, model.nms_thresh)[: model.detections_per_img]
    return Raw(boxes[keep], scores[keep], labels[keep], probs[sources[keep]], "softmax")
