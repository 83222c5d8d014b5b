"""Error capture: how well a per-image score finds the images a detector gets wrong.

The measures of ``benchmarks/bench_error_capture.py``, as pure functions over per-image arrays:

- :func:`image_errors`: each image's errors against its ground truth: false negatives (ground
  truth objects no detection matches) plus false positives (detections matching no ground
  truth), counting detections with ``score >= score_threshold``, matched by pycocotools'
  COCOeval at one IoU threshold (class-aware, greedy by score, as COCO evaluation does). The
  *normalised* error is that count over ground-truth objects plus detections (0 when both are
  0): 1 means every object was missed and every detection was wrong, whatever the image's
  crowding, where the count grows with the number of objects.
- :func:`spearman`: Spearman's rank correlation (``scipy.stats.spearmanr``, ties get their
  average rank); a constant score or error carries no ranking and gives 0.
- :func:`auroc`: the area under the ROC curve of a score for a binary label ("the image has a
  missed object"), the Mann-Whitney U statistic over ``n_pos * n_neg`` (ties count one half).
- :func:`recall_at_top`: the share of the worst ``fraction`` of images (by error) that are in
  the score's top ``fraction``; ``k = ceil(fraction * N)`` images on each side. Ties at the
  k-th place are broken uniformly at random on both sides, and the value is the *expected*
  recall over those draws, so it is deterministic and a constant score gets ``k / N``.
- :func:`mean_ci`: mean and two-sided t-interval over seeds (``scipy.stats.t``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools.cocoeval import COCOeval
from scipy import stats

from det_al.data.coco import load_results, quiet_coco


def image_errors(
    gt: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
) -> dict[int, dict[str, float]]:
    """Per image of ``gt``: ``n_gt``, ``n_det``, ``fn``, ``fp``, ``count`` (fn + fp),
    ``normalised`` (count / (n_gt + n_det), 0 when both are 0) and ``missed`` (fn >= 1).

    Args:
        gt: a COCO dict (``images``, ``annotations`` with ``bbox`` xywh, ``categories``).
        detections: COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``);
            those below ``score_threshold`` are left out.
        iou_threshold: box IoU a detection needs with a ground-truth object of its class.

    Crowd annotations (``iscrowd: 1``) are neither missed nor counted; a detection that
    matches one is not a false positive (COCOeval's ignore rules).
    """
    image_ids = [int(im["id"]) for im in gt.get("images", [])]
    out = {i: {"n_gt": 0, "n_det": 0, "fn": 0, "fp": 0} for i in image_ids}
    kept = [
        {k: v for k, v in d.items() if k not in ("segmentation", "area")}
        for d in detections
        if float(d["score"]) >= score_threshold
    ]
    # COCOeval records a match as the partner's id, 0 meaning none: ids must not be 0.
    annotations = []
    for n, ann in enumerate(gt.get("annotations", []), start=1):
        x, y, w, h = ann["bbox"]
        annotations.append(
            {**ann, "id": n, "iscrowd": int(ann.get("iscrowd", 0)), "area": float(ann.get("area", w * h))}
        )
    coco_gt = quiet_coco({"images": list(gt.get("images", [])), "annotations": annotations,
                          "categories": list(gt.get("categories", []))})
    coco_dt = load_results(coco_gt, copy.deepcopy(kept))
    per_image = max(Counter(d["image_id"] for d in kept).values(), default=1)
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    p = evaluator.params
    p.imgIds = image_ids
    p.iouThrs = np.array([iou_threshold])
    p.areaRng, p.areaRngLbl = [[0.0, 1e10]], ["all"]
    p.maxDets = [per_image]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
    for e in evaluator.evalImgs:
        if e is None:
            continue
        counts = out[int(e["image_id"])]
        gt_ignore = np.asarray(e["gtIgnore"], dtype=bool)
        gt_matched = np.asarray(e["gtMatches"]).reshape(1, -1)[0] > 0
        dt_ignore = np.asarray(e["dtIgnore"], dtype=bool).reshape(1, -1)[0]
        dt_matched = np.asarray(e["dtMatches"]).reshape(1, -1)[0] > 0
        counts["n_gt"] += int((~gt_ignore).sum())
        counts["fn"] += int((~gt_matched & ~gt_ignore).sum())
        counts["n_det"] += int((~dt_ignore).sum())
        counts["fp"] += int((~dt_matched & ~dt_ignore).sum())
    for counts in out.values():
        counts["count"] = counts["fn"] + counts["fp"]
        total = counts["n_gt"] + counts["n_det"]
        counts["normalised"] = counts["count"] / total if total else 0.0
        counts["missed"] = counts["fn"] >= 1
    return out


def _vector(x: Any, name: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"expected {name} of shape (N,), got {v.shape}")
    return v


def spearman(score: Any, error: Any) -> float:
    """Spearman's rho of ``score`` ``[N]`` with ``error`` ``[N]``; 0 when either is constant.

    >>> spearman([0.1, 0.4, 0.3], [0, 2, 1])
    1.0
    """
    s, e = _vector(score, "score"), _vector(error, "error")
    if len(s) != len(e):
        raise ValueError(f"score has {len(s)} values, error {len(e)}")
    if len(s) < 2 or np.ptp(s) == 0 or np.ptp(e) == 0:
        return 0.0
    return float(stats.spearmanr(s, e).statistic)


def auroc(score: Any, positive: Any) -> float:
    """Area under the ROC curve of ``score`` ``[N]`` for the boolean ``positive`` ``[N]``: the
    probability that a positive image outscores a negative one, ties counting one half. NaN when
    either class is empty.

    >>> auroc([0.9, 0.5, 0.5, 0.1], [True, True, False, False])
    0.875
    """
    s = _vector(score, "score")
    pos = np.asarray(positive, dtype=bool)
    if pos.shape != s.shape:
        raise ValueError(f"positive has shape {pos.shape}, score {s.shape}")
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    u = stats.mannwhitneyu(s[pos], s[~pos], alternative="two-sided").statistic
    return float(u) / (n_pos * n_neg)


def top_probability(values: Any, k: int) -> np.ndarray:
    """``[N]``: the probability that each item is among the ``k`` largest ``values`` when ties
    at the k-th place are broken uniformly at random (1 above it, 0 below it).

    >>> top_probability([3.0, 2.0, 2.0, 1.0], 2).tolist()
    [1.0, 0.5, 0.5, 0.0]
    """
    v = _vector(values, "values")
    if not 0 < k <= len(v):
        raise ValueError(f"k must be in [1, {len(v)}], got {k}")
    kth = np.sort(v)[::-1][k - 1]
    above, tied = v > kth, v == kth
    p = above.astype(np.float64)
    p[tied] = (k - above.sum()) / tied.sum()
    return p


def recall_at_top(score: Any, error: Any, fraction: float = 0.1) -> float:
    """Expected share of the ``ceil(fraction * N)`` worst images by ``error`` that are in the
    same number of top images by ``score`` (ties broken at random on both sides, see the
    module docstring).

    >>> recall_at_top([0.9, 0.8, 0.1, 0.0], [5, 0, 3, 0], fraction=0.5)
    0.5
    """
    s, e = _vector(score, "score"), _vector(error, "error")
    if len(s) != len(e) or not len(s):
        raise ValueError(f"score and error need the same, non-zero length; got {len(s)} and {len(e)}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = math.ceil(fraction * len(s) - 1e-9)
    return float((top_probability(s, k) * top_probability(e, k)).sum() / k)


def mean_ci(values: Any, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)`` of ``values`` ``[S]`` (one per seed; NaN left out) with the
    two-sided t-interval ``mean ± t_{(1+level)/2, S-1} · sd / sqrt(S)``; NaN bounds for fewer
    than two values, NaN everywhere for none.

    >>> [round(x, 4) for x in mean_ci([1.0, 2.0, 3.0])]
    [2.0, -0.4841, 4.4841]
    """
    v = _vector(values, "values")
    v = v[~np.isnan(v)]
    if not len(v):
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1.0 + level) / 2.0, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


#: the measures of one score, by key of ``error_capture.json``
MEASURES = ("spearman", "spearman_norm", "auroc_missed", "recall_at_10pct", "recall_at_10pct_norm")


def capture_measures(score: Any, errors: Mapping[str, Any], fraction: float = 0.1) -> dict[str, float]:
    """The :data:`MEASURES` of one score ``[N]`` against ``errors``: ``count`` ``[N]``,
    ``normalised`` ``[N]`` and ``missed`` ``[N]`` bool (columns of :func:`image_errors`)."""
    return {
        "spearman": spearman(score, errors["count"]),
        "spearman_norm": spearman(score, errors["normalised"]),
        "auroc_missed": auroc(score, errors["missed"]),
        "recall_at_10pct": recall_at_top(score, errors["count"], fraction),
        "recall_at_10pct_norm": recall_at_top(score, errors["normalised"], fraction),
    }


__all__ = [
    "MEASURES",
    "auroc",
    "capture_measures",
    "image_errors",
    "mean_ci",
    "recall_at_top",
    "spearman",
    "top_probability",
]
