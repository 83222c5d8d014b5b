"""The deterministic prefix of a batch: what every stochastic pass shares.

Its own module so that :mod:`det_al.inference.passes` (which computes it) and
:mod:`det_al.inference.postprocess` (which reads it) both import it without a circle.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from torch import Tensor


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


@dataclass
class SharedMasks:
    """The deterministic detections' mask features of a batch (``passes.masks: shared``).

    ``boxes[i]`` ``[N_i, 4]`` in the prefix's (resized) image coordinates; ``features[i]``
    ``[N_i, D, M, M]``: the input of the mask predictor's final 1x1 ``mask_fcn_logits``.
    """

    boxes: list[Tensor]
    features: list[Tensor]
