"""Dense, pre-threshold uncertainty: every candidate of every pass, before score threshold and NMS.

The detections of a pass are what survives the score threshold, NMS and the per-image cap; a
model that is blind to an object often leaves nothing there, so an image it gets wrong looks
empty. The candidates upstream of that still carry the evidence. During the T stochastic
passes (identity view only), :mod:`det_al.inference.passes` feeds each image's candidate class
probabilities to a :class:`~det_al.inference.candidates.DenseAccumulator`:

========== ================================================================================
rcnn       the box head's softmax for every RPN proposal (the same proposals in every pass:
           they come from the shared prefix, so no matching is needed); ``boxes`` are the
           proposals, ``objectness`` their RPN probability (``sigmoid`` of the RPN logit)
retinanet  per-class ``sigmoid(cls_logit)`` of the ``passes.dense_candidates`` (default 1000;
           0: all) anchors the deterministic pass gives the highest foreground probability
           (over every anchor of every level: about 50 000 at 512 px, whose T-pass
           probabilities would cost about half of the passes again); ``boxes`` the anchors
fcos       per-class ``sqrt(sigmoid(cls_logit) * sigmoid(centerness))``, candidates chosen as
           for RetinaNet; ``boxes`` the anchor boxes of the locations
ssd        ``softmax`` over all classes of every default box; ``boxes`` the default boxes
========== ================================================================================

For sigmoid families the column 0 (torchvision's unused background class) is left out.
Per candidate ``r`` (``p_t``: its probabilities in pass ``t``, means over the T passes,
``H``/``H_b`` as in :mod:`det_al.scoring.uncertainty`):

- ``mutual_information``: softmax ``(H(mean p) - mean H(p_t)) / log C``; sigmoid
  ``max_c (H_b(mean p_c) - mean H_b(p_tc)) / log 2``, clamped to [0, 1];
- ``entropy``: softmax ``H(mean p) / log C``; sigmoid ``max_c H_b(mean p_c) / log 2``;
- ``foreground``: softmax ``1 - mean p_0``; sigmoid ``max_c mean p_c``.

:func:`dense_scores` reduces them per image (``k = ScoringConfig.dense_topk``; "top-k mean"
is the mean of the k largest values, of all when there are fewer, 0 when there are none):

- ``dense``: top-k mean of the candidates' ``ScoringConfig.dense_term``
  (``mutual_information`` or ``entropy``);
- ``miss``: top-k mean of ``foreground`` over the candidates that no reported detection
  explains: box IoU below ``ScoringConfig.miss_iou`` with every deterministic detection whose
  score is at least ``ScoringConfig.min_score``;
- ``rpn_gap`` (R-CNN only): top-k mean of ``objectness * (1 - foreground)``: the RPN says
  object, the box head says background;
- ``n_candidates``: the number of candidates (0 only when the model proposes nothing).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

from det_al.config import ScoringConfig
from det_al.inference.candidates import Candidates

DENSE_TERMS = ("mutual_information", "entropy")
DENSE_FIELDS = ("dense", "miss", "rpn_gap", "n_candidates")


def topk_mean(values: Tensor, k: int) -> float:
    """Mean of the ``k`` largest of ``values`` ``[R]`` (all when fewer; 0.0 when none).

    >>> topk_mean(torch.tensor([0.1, 0.7, 0.4], dtype=torch.float64), 2)
    0.55
    """
    if values.numel() == 0:
        return 0.0
    return round(float(values.double().topk(min(k, values.numel())).values.mean()), 12)


def dense_scores(candidates: Candidates | None, detection_boxes: Tensor, detection_scores: Tensor,
                 scoring: ScoringConfig) -> dict[str, float | int]:
    """``dense``, ``miss``, ``n_candidates`` (and ``rpn_gap`` with an RPN) of one image.

    Args:
        candidates: the image's :class:`Candidates`; ``None`` (none could be gathered) gives
            zeros and ``n_candidates`` 0.
        detection_boxes: ``[N, 4]`` the deterministic detections, in the candidates' coordinates.
        detection_scores: ``[N]`` their scores; those below ``scoring.min_score`` explain nothing.
    """
    k = scoring.dense_topk
    if candidates is None:
        return {"dense": 0.0, "miss": 0.0, "n_candidates": 0}
    term = getattr(candidates, scoring.dense_term)
    reported = detection_boxes[detection_scores >= scoring.min_score].float()
    unexplained = torch.ones(len(candidates), dtype=torch.bool)
    if len(candidates) and reported.shape[0]:
        unexplained = box_iou(candidates.boxes.float(), reported).max(dim=1).values < scoring.miss_iou
    out: dict[str, float | int] = {
        "dense": topk_mean(term, k),
        "miss": topk_mean(candidates.foreground[unexplained], k),
    }
    if candidates.objectness is not None:
        out["rpn_gap"] = topk_mean(candidates.objectness * (1.0 - candidates.foreground), k)
    out["n_candidates"] = len(candidates)
    return out
