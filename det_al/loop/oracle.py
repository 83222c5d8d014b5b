"""What only a simulation knows: each pool image's true error, and the one-pass peer score.

The simulated loop holds the pool's ground truth (the oracle file), so it can rank the pool by
how wrong the model really is on each image: the ``oracle_error`` of :func:`image_errors`,
which the loop's ``top:oracle_error`` arm picks by (the positive control of the
label-efficiency benchmark: no score can find the errors better than the errors themselves).

:func:`least_confidence` is the peer baseline that labelling tools ship (1 - mean score of the
deterministic pass's detections, an image without detections 0), computed from pseudo-labels
for rankings that do not carry it yet.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_iou

from det_al.data.coco import xywh_to_xyxy

IOU_THRESHOLD = 0.5
SCORE_THRESHOLD = 0.5  # detections below it are not reported to the user, so they are no error


def count_errors(
    det_boxes: Tensor, det_labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor, iou_threshold: float = IOU_THRESHOLD
) -> int:
    """Missed objects plus false detections of one image.

    Boxes are ``[N, 4]`` / ``[M, 4]`` ``xyxy``; labels ``[N]`` / ``[M]``. A detection and a
    ground-truth box of the same label are a match at IoU ``>= iou_threshold``; the matches are
    one-to-one assignment with the most matches (ties: the larger summed IoU). Returns
    ``(M - matches) + (N - matches)``.
    """
    n, m = len(det_boxes), len(gt_boxes)
    if n == 0 or m == 0:
        return n + m
    iou = box_iou(det_boxes.double(), gt_boxes.double())
    iou[det_labels[:, None] != gt_labels[None, :]] = 0.0
    hit = iou >= iou_threshold
    rows, cols = linear_sum_assignment((hit.double() + 1e-3 * iou).numpy(), maximize=True)
    matches = int(hit[rows, cols].sum())
    return n + m - 2 * matches


def image_errors(
    image_ids: Iterable[int],
    detections: Iterable[Mapping[str, Any]],
    truth: Iterable[Mapping[str, Any]],
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
) -> dict[int, int]:
    """``{image_id: errors}`` (:func:`count_errors`) of COCO detections (with ``score``;
    those below ``score_threshold`` are left out) against COCO ground truth, for ``image_ids``."""
    dets: dict[int, list] = defaultdict(list)
    for d in detections:
        if float(d["score"]) >= score_threshold:
            dets[int(d["image_id"])].append(d)
    gts: dict[int, list] = defaultdict(list)
    for a in truth:
        if not a.get("iscrowd", 0):
            gts[int(a["image_id"])].append(a)

    def boxes_labels(anns: list) -> tuple[Tensor, Tensor]:
        boxes = xywh_to_xyxy([a["bbox"] for a in anns]) if anns else torch.zeros((0, 4))
        return boxes.reshape(-1, 4), torch.tensor([int(a["category_id"]) for a in anns], dtype=torch.int64)

    out = {}
    for i in image_ids:
        out[int(i)] = count_errors(*boxes_labels(dets[int(i)]), *boxes_labels(gts[int(i)]), iou_threshold)
    return out


def least_confidence(image_ids: Iterable[int], detections: Iterable[Mapping[str, Any]]) -> dict[int, float]:
    """``{image_id: 1 - mean detection score}`` over the given (deterministic) detections; 0
    for an image without any (the convention of the labelling tools' one-pass scorer)."""
    scores: dict[int, list[float]] = defaultdict(list)
    for d in detections:
        scores[int(d["image_id"])].append(float(d["score"]))
    return {int(i): (1.0 - float(np.mean(scores[int(i)]))) if scores[int(i)] else 0.0 for i in image_ids}
