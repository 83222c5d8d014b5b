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

from det_al.loop.error_capture import image_errors as capture_errors

IOU_THRESHOLD = 0.5
SCORE_THRESHOLD = 0.5  # detections below it are not reported to the user, so they are no error


def image_errors(
    image_ids: Iterable[int],
    detections: Iterable[Mapping[str, Any]],
    truth: Iterable[Mapping[str, Any]],
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
) -> dict[int, int]:
    """``{image_id: missed objects + false detections}`` of COCO detections (with ``score``;
    those below ``score_threshold`` are left out) against COCO ground truth, for ``image_ids``.

    The error of the error-capture benchmark (:func:`det_al.loop.error_capture.image_errors`'s
    ``count``): matched by COCOeval at ``iou_threshold``, class-aware and greedy by score, as COCO
    evaluation matches; crowd annotations are neither missed nor counted.
    """
    ids = [int(i) for i in image_ids]
    wanted = set(ids)
    truth, detections = list(truth), list(detections)
    categories = sorted({int(a["category_id"]) for a in truth} | {int(d["category_id"]) for d in detections})
    gt = {
        "images": [{"id": i} for i in ids],
        "annotations": [a for a in truth if int(a["image_id"]) in wanted],
        "categories": [{"id": c, "name": str(c)} for c in categories],
    }
    errors = capture_errors(gt, [d for d in detections if int(d["image_id"]) in wanted], score_threshold, iou_threshold)
    return {i: int(errors[i]["count"]) for i in ids}


def least_confidence(image_ids: Iterable[int], detections: Iterable[Mapping[str, Any]]) -> dict[int, float]:
    """``{image_id: 1 - mean detection score}`` over the given (deterministic) detections; 0
    for an image without any (the convention of the labelling tools' one-pass scorer)."""
    scores: dict[int, list[float]] = defaultdict(list)
    for d in detections:
        scores[int(d["image_id"])].append(float(d["score"]))
    return {int(i): (1.0 - float(np.mean(scores[int(i)]))) if scores[int(i)] else 0.0 for i in image_ids}
