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

from det_al.inference.detections import Detections

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
    rows, cols = _assign(iou, iou_threshold)
    return torch.from_numpy(rows), torch.from_numpy(cols)


def _assign(iou: Tensor, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`assign` with numpy int64 results, for :func:`match_passes`' bookkeeping."""
    # Only rows and columns with a valid pair take part: smaller problems, same optimum. Valid
    # pairs are few (each object overlaps few detections): past this line all is small work.
    valid = (iou >= iou_threshold).cpu().numpy()
    flat = np.flatnonzero(valid)  # far faster than a 2-D nonzero
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    valid_rows, valid_cols = np.divmod(flat, valid.shape[1])
    rows, row_at = np.unique(valid_rows, return_inverse=True)
    cols, col_at = np.unique(valid_cols, return_inverse=True)
    weight = np.zeros((rows.size, cols.size))
    weight[row_at, col_at] = iou.cpu().numpy()[valid_rows, valid_cols]
    r, c = linear_sum_assignment(weight, maximize=True)
    keep = weight[r, c] > 0  # 0: a pair below the threshold
    return rows[r[keep]].astype(np.int64), cols[c[keep]].astype(np.int64)


def _pair_iou(
    boxes_a: Tensor, labels_a: Tensor, boxes_b: Tensor, labels_b: Tensor, class_aware: bool
) -> Tensor:
    """``[A, B]`` IoU, zeroed for pairs of different labels when ``class_aware``."""
    iou = box_iou(boxes_a.float(), boxes_b.float())
    if class_aware:
        iou = iou * (labels_a[:, None] == labels_b[None, :])
    return iou


class _Unanchored:
    """The objects that no anchor detection started, as :func:`match_passes` grows them pass by
    pass: ``n`` of them so far, with their running box sums, counts and labels (their mean box
    is what a later pass's leftovers are matched to)."""

    def __init__(self, capacity: int):
        self.sums = np.zeros((capacity, 4))
        self.counts = np.zeros(capacity)
        self.labels = np.zeros(capacity, dtype=np.int64)
        self.n = 0

    def take(self, column: np.ndarray, left: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
             iou_threshold: float, class_aware: bool) -> None:
        """One pass's leftovers (their positions ``left`` in the pass, ``boxes`` ``[L, 4]``,
        ``labels``): each joins the object whose mean box it is assigned to, the rest start new
        objects. ``column`` is the pass's column of the index from the first unanchored row; it
        gets the positions."""
        taken = np.zeros(left.size, dtype=bool)
        if self.n:
            mean_box = torch.from_numpy(self.sums[: self.n] / self.counts[: self.n, None])
            iou = _pair_iou(mean_box, torch.from_numpy(self.labels[: self.n]), torch.from_numpy(boxes),
                            torch.from_numpy(labels), class_aware)
            r, c = _assign(iou, iou_threshold)
            column[r] = left[c]
            self.sums[r] += boxes[c]
            self.counts[r] += 1
            taken[c] = True
        start = np.flatnonzero(~taken)  # leftovers that start objects n..end - 1
        end = self.n + start.size
        column[self.n : end] = left[start]
        self.sums[self.n : end] = boxes[start]
        self.counts[self.n : end] = 1
        self.labels[self.n : end] = labels[start]
        self.n = end


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

    >>> from det_al.inference.detections import Detections
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
    sizes = [len(p) for p in passes]
    starts = np.cumsum([0] + sizes).tolist()  # pass t's detections are starts[t]:starts[t + 1]
    total = starts[-1]
    all_boxes = torch.cat([p.boxes.cpu() for p in passes]) if passes else torch.zeros((0, 4))
    all_labels = torch.cat([p.labels.cpu() for p in passes]) if passes else torch.zeros(0, dtype=torch.int64)
    # The anchor against every pass at once, [N0, total]; split by pass below.
    anchor_iou = _pair_iou(anchor.boxes.cpu(), anchor.labels.cpu(), all_boxes, all_labels, class_aware)

    # The books are numpy arrays (many small updates). Every detection is in exactly one object,
    # so there are at most n_anchor + total objects: rows n_anchor.. of index are the
    # not-anchored objects.
    det_boxes, det_labels = all_boxes.double().numpy(), all_labels.numpy()
    index = np.full((n_anchor + total, num_passes), -1, dtype=np.int64)
    unanchored = _Unanchored(total)
    for t in range(num_passes):
        claimed = np.zeros(sizes[t], dtype=bool)
        if n_anchor and sizes[t]:
            r, c = _assign(anchor_iou[:, starts[t] : starts[t + 1]], iou_threshold)
            index[r, t] = c
            claimed[c] = True
        left = np.flatnonzero(~claimed)  # the leftovers: detections no anchor claimed
        if left.size:
            unanchored.take(index[n_anchor:, t], left, det_boxes[starts[t] + left], det_labels[starts[t] + left],
                            iou_threshold, class_aware)
    n_new = unanchored.n
    anchor_index = torch.cat(
        [torch.arange(n_anchor, dtype=torch.int64), torch.full((n_new,), -1, dtype=torch.int64)]
    )
    logger.debug("matched %d anchored and %d new objects over %d passes", n_anchor, n_new, num_passes)
    return Objects(index=torch.from_numpy(index[: n_anchor + n_new].copy()), anchor=anchor_index)
