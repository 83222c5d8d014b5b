"""One-pass baselines (det_al.scoring.one_pass) with hand-computed values, on each family's tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from det_al.inference.detections import Detections
from det_al.scoring.one_pass import one_pass_scores


def dets(scores, probs, kind="softmax"):
    n = len(scores)
    return Detections(torch.zeros((n, 4)), torch.tensor(scores), torch.ones(n, dtype=torch.int64),
                      torch.tensor(probs), prob_kind=kind)


def test_empty_image_scores_zero():
    assert one_pass_scores(Detections.empty(3)) == {"least_confidence": 0.0, "n_detections": 0, "max_entropy": 0.0}


def test_softmax_values_by_hand():
    d = dets([0.8, 0.6, 0.1], [[0.2, 0.8, 0.0], [0.2, 0.6, 0.2], [1 / 3, 1 / 3, 1 / 3]])
    out = one_pass_scores(d)
    assert out["n_detections"] == 3
    assert out["least_confidence"] == pytest.approx(1 - 1.5 / 3)  # 1 - mean(0.8, 0.6, 0.1)
    assert out["max_entropy"] == pytest.approx(1.0, abs=1e-6)  # the uniform row: log 3 / log 3


def test_sigmoid_entropy_is_the_largest_binary_entropy():
    d = dets([0.9], [[0.0, 0.9, 0.25]], kind="sigmoid")
    hb = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)  # 0.811278, > H_b(0.9)
    out = one_pass_scores(d)
    assert out["least_confidence"] == pytest.approx(0.1)
    assert out["max_entropy"] == pytest.approx(hb, abs=1e-6)
