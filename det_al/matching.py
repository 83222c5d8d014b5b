"""Matching the detections of the stochastic passes into objects.

One image gives a deterministic pass (the *anchor*: no dropout, no TTA; its detections are the
pseudo-labels) and T stochastic passes. An *object* collects at most one detection from each
pass:

1. **Anchored objects.** Object ``k`` is anchor detection ``k`` for ``k < len(anchor)``. For each
   pass, an optimal one-to-one assignment (``scipy.optimize.linear_sum_assignment`` maximising
   the total IoU, ``torchvision.ops.box_iou``) pairs anchor detections with the pass's
   detections; pairs below ``iou_threshold`` are rejected (the pass *missed* that object).
2. **Objects the anchor did not see.** Passes are processed in order; the leftovers of pass ``t``
   (detections no anchor claimed) are assigned one-to-one, in the same way, against the
   not-anchored objects formed by passes ``0..t-1``, comparing with each object's running mean
   box. Leftovers that match none start new objects, in detection order.

With ``class_aware=True`` a pair whose labels differ is forbidden (its IoU counts as 0); for a
not-anchored object the label is the label of the detection that started it. With
``class_aware=False`` labels are ignored.

The result is an :class:`Objects`: ``index[k, t]`` is the index of pass ``t``'s detection in
object ``k`` (``-1``: a miss) and ``anchor[k]`` the index of the anchor detection (``-1``: not
anchored). Anchored objects come first, in anchor order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_iou

from det_al.detections import Detections

logger = logging.getLogger(__name__)


@dataclass
class Objects:
    """Objects matched across passes.

    Attributes:
        index: ``[K, T]`` int64, the index of the detection of pass ``t`` in object ``k``;
            ``-1`` when pass ``t`` missed the object.
        anchor: ``[K]`` int64, the index of the anchor (deterministic) detection of object
            ``k``; ``-1`` for an object the anchor did not see. Anchored objects come first.
    """

    index: Tensor
    anchor: Tensor

    def __post_init__(self) -> None:
        if self.index.ndim != 2:
            raise ValueError(f"expected index of shape (K, T), got {tuple(self.index.shape)}")
        if self.index.dtype != torch.int64 or self.anchor.dtype != torch.int64:
            raise ValueError(
                f"expected int64 index and anchor, got {self.index.dtype} and {self.anchor.dtype}"
            )
        k = self.index.shape[0]
        if tuple(self.anchor.shape) != (k,):
            raise ValueError(f"expected anchor of shape ({k},), got {tuple(self.anchor.shape)}")
        if self.index.numel() and int(self.index.min()) < -1:
            raise ValueError("index values must be >= -1")
        if self.anchor.numel() and int(self.anchor.min()) < -1:
            raise ValueError("anchor values must be >= -1")

    def __len__(self) -> int:
        return self.index.shape[0]

    @property
    def num_passes(self) -> int:
        return self.index.shape[1]

    @property
    def found(self) -> Tensor:
        """``[K, T]`` bool: pass ``t`` found object ``k``."""
        return self.index >= 0


def assign(iou: Tensor, iou_threshold: float) -> tuple[Tensor, Tensor]:
    """Optimal one-to-one assignment maximising the total IoU, pairs below the threshold rejected.

    Args:
        iou: ``[R, D]`` IoU of R rows (objects) with D detections; forbidden pairs hold 0.
        iou_threshold: the smallest IoU a kept pair may have, in (0, 1].

    Returns:
        ``(rows, cols)``: int64 index tensors of equal length, the kept pairs.

    Entries below the threshold are zeroed before solving, so the assignment maximises the
    total IoU of the pairs that will be kept.

    >>> assign(torch.tensor([[0.9, 0.6], [0.7, 0.0]]), 0.5)
    (tensor([0, 1]), tensor([1, 0]))
    """
    empty = torch.zeros(0, dtype=torch.int64)
    if iou.numel() == 0:
        return empty, empty
    valid = iou >= iou_threshold
    # Only rows and columns with a valid pair take part: smaller problems, same optimum.
    rows = valid.any(dim=1).nonzero().squeeze(1)
    cols = valid.any(dim=0).nonzero().squeeze(1)
    if rows.numel() == 0:
        return empty, empty
    weight = torch.where(valid, iou, torch.zeros(())).index_select(0, rows).index_select(1, cols)
    r, c = linear_sum_assignment(weight.double().numpy(), maximize=True)
    r = torch.from_numpy(r.astype(np.int64))
    c = torch.from_numpy(c.astype(np.int64))
    keep = weight[r, c] >= iou_threshold
    return rows[r[keep]], cols[c[keep]]


def _pair_iou(
    boxes_a: Tensor, labels_a: Tensor, boxes_b: Tensor, labels_b: Tensor, class_aware: bool
) -> Tensor:
    """``[A, B]`` IoU, zeroed for pairs of different labels when ``class_aware``."""
    iou = box_iou(boxes_a.float(), boxes_b.float())
    if class_aware:
        iou = iou * (labels_a[:, None] == labels_b[None, :])
    return iou


def match_passes(
    anchor: Detections,
    passes: list[Detections],
    iou_threshold: float = 0.5,
    class_aware: bool = False,
) -> Objects:
    """Group the detections of the T passes into objects (see the module docstring).

    Args:
        anchor: the deterministic pass's detections (N0 of them).
        passes: the T stochastic passes.
        iou_threshold: the smallest IoU of a matched pair.
        class_aware: forbid pairs of different labels.

    Returns:
        :class:`Objects` with ``K >= N0`` objects: ``index`` ``[K, T]``, ``anchor`` ``[K]``
        (CPU tensors, wherever the detections are).

    >>> from det_al.detections import Detections
    >>> def dets(boxes, labels):
    ...     n = len(boxes)
    ...     return Detections(torch.tensor(boxes, dtype=torch.float32), torch.ones(n),
    ...                       torch.tensor(labels), torch.full((n, 3), 1 / 3))
    >>> a = dets([[0, 0, 10, 10]], [1])
    >>> p = [dets([[50, 50, 60, 60], [1, 0, 11, 10]], [2, 1]), dets([[50, 51, 60, 61]], [2])]
    >>> objects = match_passes(a, p)
    >>> objects.index.tolist(), objects.anchor.tolist()
    ([[1, -1], [0, 0]], [0, -1])
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    num_passes = len(passes)
    n_anchor = len(anchor)
    anchor_boxes, anchor_labels = anchor.boxes.cpu(), anchor.labels.cpu()
    anchored = torch.full((n_anchor, num_passes), -1, dtype=torch.int64)

    # Not-anchored objects: running box sums, counts, labels and their index rows.
    new_rows: list[Tensor] = []
    new_sum = torch.zeros((0, 4), dtype=torch.float64)
    new_count = torch.zeros((0,), dtype=torch.float64)
    new_label = torch.zeros((0,), dtype=torch.int64)

    for t, det in enumerate(passes):
        det_boxes, det_labels = det.boxes.cpu(), det.labels.cpu()
        leftover = torch.ones(len(det), dtype=torch.bool)
        if n_anchor and len(det):
            iou = _pair_iou(anchor_boxes, anchor_labels, det_boxes, det_labels, class_aware)
            r, c = assign(iou, iou_threshold)
            anchored[r, t] = c
            leftover[c] = False
        left = leftover.nonzero().squeeze(1)
        if left.numel() == 0:
            continue
        boxes = det_boxes[left].double()
        labels = det_labels[left]
        taken = torch.zeros(left.numel(), dtype=torch.bool)
        if len(new_rows):
            mean_box = new_sum / new_count[:, None]
            iou = _pair_iou(mean_box, new_label, boxes, labels, class_aware)
            r, c = assign(iou, iou_threshold)
            for obj, j in zip(r.tolist(), c.tolist()):
                new_rows[obj][t] = left[j]
            new_sum[r] += boxes[c]
            new_count[r] += 1
            taken[c] = True
        start = (~taken).nonzero().squeeze(1)
        for j in start.tolist():
            row = torch.full((num_passes,), -1, dtype=torch.int64)
            row[t] = left[j]
            new_rows.append(row)
        new_sum = torch.cat([new_sum, boxes[start]])
        new_count = torch.cat([new_count, torch.ones(start.numel(), dtype=torch.float64)])
        new_label = torch.cat([new_label, labels[start]])

    n_new = len(new_rows)
    index = anchored
    if n_new:
        index = torch.cat([anchored, torch.stack(new_rows)])
    anchor_index = torch.cat(
        [torch.arange(n_anchor, dtype=torch.int64), torch.full((n_new,), -1, dtype=torch.int64)]
    )
    logger.debug("matched %d anchored and %d new objects over %d passes", n_anchor, n_new, num_passes)
    return Objects(index=index, anchor=anchor_index)
