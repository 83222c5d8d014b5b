"""One-pass baselines: what a labelling tool computes from the deterministic pass alone.

Users compare det_al against these, so they are written beside its own scores in
``ranking.jsonl`` and selectable as ``top:least_confidence``, ``top:n_detections``,
``top:max_entropy``. From the deterministic detections of one image (``N`` of them):

- ``least_confidence``: ``1 - mean_n score_n``; an image without detections scores 0 (as
  Lightly's ``objectness_least_confidence`` does).
- ``n_detections``: ``N``.
- ``max_entropy``: the largest class entropy of a detection over its full class distribution,
  normalised to [0, 1] as :func:`det_al.scoring.uncertainty.class_components` does for one pass:
  softmax ``H(p) / log C`` (background included); sigmoid ``max_c H_b(p_c) / log 2``. 0 without
  detections.
"""

from __future__ import annotations

import torch

from det_al.inference.detections import Detections
from det_al.scoring.uncertainty import class_components

ONE_PASS_FIELDS = ("least_confidence", "n_detections", "max_entropy")


def one_pass_scores(anchor: Detections) -> dict[str, float | int]:
    """``least_confidence``, ``n_detections`` and ``max_entropy`` of one image's deterministic pass.

    >>> det = Detections(torch.zeros((2, 4)), torch.tensor([0.9, 0.5]), torch.tensor([1, 1]),
    ...                  torch.tensor([[0.1, 0.9], [0.5, 0.5]]))
    >>> {k: round(v, 4) for k, v in one_pass_scores(det).items()}
    {'least_confidence': 0.3, 'n_detections': 2, 'max_entropy': 1.0}
    """
    n = len(anchor)
    if n == 0:
        return {"least_confidence": 0.0, "n_detections": 0, "max_entropy": 0.0}
    entropy = class_components(anchor.probs.float()[:, None, :], anchor.prob_kind)["entropy"]
    return {
        "least_confidence": float(1.0 - anchor.scores.double().mean()),
        "n_detections": n,
        "max_entropy": float(entropy.max()),
    }
