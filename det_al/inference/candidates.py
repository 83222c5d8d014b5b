"""The candidates of the dense signals, accumulated over the passes (:mod:`det_al.scoring.dense`).

:mod:`det_al.inference.passes` feeds each image's candidate class probabilities, a chunk of
passes at a time, to a :class:`DenseAccumulator`; its :class:`Candidates` (per-candidate mutual
information, entropy and foreground probability over the T passes, defined in
:mod:`det_al.scoring.dense`) are what :func:`det_al.scoring.dense.dense_scores` reduces per image.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

logger = logging.getLogger(__name__)


@dataclass
class Candidates:
    """Per-candidate values of one image over its T passes.

    Attributes:
        boxes: ``[R, 4]`` xyxy pixels of the original image (proposals, anchors, default boxes).
        mutual_information, entropy, foreground: ``[R]`` in [0, 1] (module docstring).
        objectness: ``[R]`` the RPN's probability of each proposal (R-CNN), else ``None``.
    """

    boxes: Tensor
    mutual_information: Tensor
    entropy: Tensor
    foreground: Tensor
    objectness: Tensor | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def _entropy(p: Tensor) -> Tensor:
    return -torch.special.xlogy(p, p).sum(-1)


def _binary_entropy(p: Tensor) -> Tensor:
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


class DenseAccumulator:
    """Running sums over passes of one image's candidate probabilities.

    ``add`` takes the passes as they are computed (a chunk at a time); the sums are the mean
    probability ``[R, C]`` and the mean entropy (softmax ``[R]``, sigmoid ``[R, C]``), all a
    candidate's mutual information needs. Candidates must be the same in every pass: a call
    whose ``boxes`` differ from the first call's (a dropout site upstream of the proposals on
    the plain path) marks the accumulator invalid and :meth:`candidates` returns ``None``.
    """

    def __init__(self, prob_kind: str, max_candidates: int = 0):
        self.prob_kind = prob_kind
        self.max_candidates = max_candidates
        self.index: Tensor | None = None  # RetinaNet/FCOS: the anchors chosen as candidates
        self.count = 0
        self.valid = True
        self.sum_probs: Tensor | None = None
        self.sum_entropy: Tensor | None = None
        self.boxes: Tensor | None = None
        self.objectness: Tensor | None = None

    def add(self, probs: Tensor, boxes: Tensor, objectness: Tensor | None = None) -> None:
        """Add T passes: ``probs [R, T, C]`` (sigmoid: without column 0), ``boxes [R, 4]``."""
        if not self.valid:
            return
        if self.boxes is None:
            self.boxes, self.objectness = boxes, objectness
        elif self.boxes.shape != boxes.shape or not torch.equal(self.boxes, boxes):
            logger.info("candidates differ between passes (dropout upstream of them): no dense values")
            self.valid = False
            return
        probs = probs.float().clamp(0.0, 1.0)
        h = _entropy(probs) if self.prob_kind == "softmax" else _binary_entropy(probs)
        s_p, s_h = probs.sum(1), h.sum(1)
        if self.sum_probs is None:
            self.sum_probs, self.sum_entropy = s_p, s_h
        else:
            self.sum_probs, self.sum_entropy = self.sum_probs + s_p, self.sum_entropy + s_h
        self.count += int(probs.shape[1])

    def candidates(self) -> Candidates | None:
        """The per-candidate values (boxes in the coordinates they were given in)."""
        if not self.valid or self.count == 0 or self.boxes is None:
            return None
        mean = self.sum_probs / self.count
        expected = self.sum_entropy / self.count
        if self.prob_kind == "softmax":
            c = mean.shape[-1]
            log_c = math.log(c) if c > 1 else 1.0
            predictive = _entropy(mean)
            mutual = (predictive - expected) / log_c
            entropy = predictive / log_c
            foreground = 1.0 - mean[:, 0] if c else mean.new_zeros(mean.shape[0])
        else:
            predictive = _binary_entropy(mean)
            if mean.shape[-1] == 0:
                zero = mean.new_zeros(mean.shape[0])
                mutual, entropy, foreground = zero, zero.clone(), zero.clone()
            else:
                mutual = (predictive - expected).amax(-1) / math.log(2)
                entropy = predictive.amax(-1) / math.log(2)
                foreground = mean.amax(-1)
        clamp = lambda x: x.clamp(0.0, 1.0).cpu()  # noqa: E731
        return Candidates(self.boxes.cpu(), clamp(mutual), clamp(entropy), clamp(foreground),
                          None if self.objectness is None else self.objectness.float().cpu())
