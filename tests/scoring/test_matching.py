"""Matching on hand-made boxes. All boxes are 10 high, so an IoU is overlap / (w_a + w_b - overlap)."""

from __future__ import annotations

import pytest
import torch

from det_al.inference.detections import Detections
from det_al.scoring.matching import Objects, assign, match_passes


def dets(boxes: list[list[float]], labels: list[int] | None = None, num_classes: int = 3) -> Detections:
    n = len(boxes)
    return Detections(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
        scores=torch.full((n,), 0.9),
        labels=torch.tensor(labels if labels is not None else [1] * n, dtype=torch.int64),
        probs=torch.full((n, num_classes), 1.0 / num_classes),
    )


def empty() -> Detections:
    return Detections.empty(3)


A = [0, 0, 10, 10]
B = [50, 0, 60, 10]


def test_reordered_detections():
    # Each pass lists the two objects in a different order; the match follows the boxes.
    anchor = dets([A, B])
    passes = [dets([[51, 0, 61, 10], [1, 0, 11, 10]]), dets([[0, 0, 10, 10], [50, 0, 60, 10]])]
    objects = match_passes(anchor, passes)
    assert objects.index.tolist() == [[1, 0], [0, 1]]
    assert objects.anchor.tolist() == [0, 1]


def test_misses():
    # pass 0 finds both, pass 1 only A, pass 2 nothing; B's pass-1 box is too far (IoU 0).
    anchor = dets([A, B])
    passes = [dets([A, B]), dets([A, [80, 0, 90, 10]]), empty()]
    objects = match_passes(anchor, passes)
    assert objects.index[:2].tolist() == [[0, 0, -1], [1, -1, -1]]
    # The unclaimed pass-1 box becomes an object of its own.
    assert objects.index[2:].tolist() == [[-1, 1, -1]]
    assert objects.anchor.tolist() == [0, 1, -1]
    assert objects.found.sum(1).tolist() == [2, 1, 1]


def test_two_overlapping_objects_optimal_not_greedy():
    # a = [0, 10], b = [4, 14]; detections d1 = [1, 11], d2 = [-2, 8]:
    # IoU(a, d1) = 9/11 = 0.818, IoU(b, d1) = 7/13 = 0.538,
    # IoU(a, d2) = 8/12 = 0.667, IoU(b, d2) = 4/16 = 0.25 (< 0.5).
    # Greedy takes a-d1 first and leaves b unmatched; the optimal assignment
    # a-d2 + b-d1 = 1.205 > 0.818 matches both.
    anchor = dets([[0, 0, 10, 10], [4, 0, 14, 10]])
    passes = [dets([[1, 0, 11, 10], [-2, 0, 8, 10]])]
    objects = match_passes(anchor, passes)
    assert objects.index.tolist() == [[1], [0]]
    assert objects.anchor.tolist() == [0, 1]


def test_one_detection_per_pass_per_object():
    # Two detections of one pass overlap anchor A: the better one joins A, the other starts
    # a new object; two leftovers of the same pass are never merged with each other.
    anchor = dets([A])
    passes = [dets([[1, 0, 11, 10], [0, 0, 10, 10], [0, 0, 10, 10]])]
    objects = match_passes(anchor, passes)
    assert objects.index.tolist() == [[1], [0], [2]]
    assert objects.anchor.tolist() == [0, -1, -1]


@pytest.mark.parametrize(
    "class_aware, index, anchor",
    [
        (False, [[0, 0]], [0]),  # labels ignored: same box, one object
        (True, [[-1, 0], [0, -1]], [0, -1]),  # label 2 may not join the label-1 anchor
    ],
)
def test_class_aware_vs_agnostic(class_aware, index, anchor):
    passes = [dets([A], labels=[2]), dets([A], labels=[1])]
    objects = match_passes(dets([A], labels=[1]), passes, class_aware=class_aware)
    assert objects.index.tolist() == index
    assert objects.anchor.tolist() == anchor


def test_class_aware_leftovers():
    # No anchor; pass 0 starts a label-1 object, pass 1's label-2 box on the same spot may not
    # join it when class-aware.
    passes = [dets([A], labels=[1]), dets([A], labels=[2])]
    assert match_passes(empty(), passes, class_aware=True).index.tolist() == [[0, -1], [-1, 0]]
    assert match_passes(empty(), passes, class_aware=False).index.tolist() == [[0, 0]]


def test_empty_anchor_running_mean():
    # No anchor. X = [0, 10] in pass 0; pass 1's [2, 12] has IoU 8/12 = 0.667 with X and joins
    # (mean box [1, 11]); pass 2's [4, 14] has IoU 6/14 = 0.43 with the first box but
    # 7/13 = 0.538 with the running mean [1, 11], so it joins too.
    # Y = B appears in passes 0 and 1; Z = [80, 90] only in pass 1.
    passes = [
        dets([[0, 0, 10, 10], B]),
        dets([B, [80, 0, 90, 10], [2, 0, 12, 10]]),
        dets([[4, 0, 14, 10]]),
    ]
    objects = match_passes(empty(), passes)
    assert objects.index.tolist() == [[0, 2, 0], [1, 0, -1], [-1, 1, -1]]
    assert objects.anchor.tolist() == [-1, -1, -1]


def test_empty_passes():
    objects = match_passes(dets([A, B]), [empty(), empty(), empty()])
    assert objects.index.tolist() == [[-1, -1, -1], [-1, -1, -1]]
    assert objects.anchor.tolist() == [0, 1]


def test_all_empty():
    objects = match_passes(empty(), [empty(), empty()])
    assert tuple(objects.index.shape) == (0, 2)
    assert tuple(objects.anchor.shape) == (0,)
    assert objects.index.dtype == torch.int64


def test_no_passes():
    objects = match_passes(dets([A, B]), [])
    assert tuple(objects.index.shape) == (2, 0)
    assert objects.anchor.tolist() == [0, 1]


def test_threshold_rejects_low_iou():
    # IoU([0, 10], [4, 14]) = 6/14 = 0.43: a miss at 0.5, a match at 0.4.
    passes = [dets([[4, 0, 14, 10]])]
    assert match_passes(dets([A]), passes, iou_threshold=0.5).index.tolist() == [[-1], [0]]
    assert match_passes(dets([A]), passes, iou_threshold=0.4).index.tolist() == [[0]]
    with pytest.raises(ValueError, match="iou_threshold"):
        match_passes(dets([A]), passes, iou_threshold=0.0)


def test_assign():
    rows, cols = assign(torch.tensor([[0.9, 0.6], [0.7, 0.2]]), 0.5)
    assert (rows.tolist(), cols.tolist()) == ([0, 1], [1, 0])  # 0.6 + 0.7 > 0.9
    rows, cols = assign(torch.tensor([[0.3, 0.2]]), 0.5)
    assert rows.numel() == cols.numel() == 0
    rows, cols = assign(torch.zeros(0, 3), 0.5)
    assert rows.numel() == 0


def test_assign_rows_and_columns_without_a_pair():
    # Rows 0 and 2 have no entry >= .5 and drop out of the problem; rows 1 and 3 compete:
    # 1-1 + 3-0 = .8 + .55 = 1.35 < 1-2 + 3-1 = .6 + .9 = 1.5.
    iou = torch.tensor([[0.1, 0.1, 0.1], [0.1, 0.8, 0.6], [0.1, 0.2, 0.1], [0.55, 0.9, 0.1]])
    rows, cols = assign(iou, 0.5)
    assert (rows.tolist(), cols.tolist()) == ([1, 3], [2, 1])
    assert rows.dtype == cols.dtype == torch.int64


@pytest.mark.parametrize(
    "index, anchor, message",
    [
        (torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64), "index of shape"),
        (torch.zeros(2, 3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64), "anchor of shape"),
        (torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64), "int64"),
        (torch.full((1, 1), -2, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), ">= -1"),
    ],
)
def test_objects_validation(index, anchor, message):
    with pytest.raises(ValueError, match=message):
        Objects(index=index, anchor=anchor)
