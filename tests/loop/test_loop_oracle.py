"""The simulated loop's oracle error and the one-pass least-confidence score, by hand."""

import pytest

from det_al.loop.oracle import image_errors, least_confidence


def coco(image_id, boxes, labels, score=None):
    """COCO annotations (or detections, with a score) of ``xyxy`` boxes."""
    out = []
    for (x0, y0, x1, y1), label in zip(boxes, labels):
        out.append({"image_id": image_id, "category_id": label, "bbox": [x0, y0, x1 - x0, y1 - y0]})
        if score is not None:
            out[-1]["score"] = score
    return out


@pytest.mark.parametrize(
    "dets, det_labels, gts, gt_labels, expected",
    [
        ([], [], [], [], 0),
        ([[0, 0, 10, 10]], [1], [], [], 1),  # a false detection
        ([], [], [[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2], 2),  # two misses
        ([[0, 0, 10, 10]], [1], [[0, 0, 10, 10]], [1], 0),  # a hit
        ([[0, 0, 10, 10]], [2], [[0, 0, 10, 10]], [1], 2),  # wrong class: a miss and a false one
        # IoU of [0,0,10,10] and [0,0,10,20] is 100/200 = 0.5: a hit; [0,0,10,21] gives 100/210 < 0.5
        ([[0, 0, 10, 10]], [1], [[0, 0, 10, 20]], [1], 0),
        ([[0, 0, 10, 10]], [1], [[0, 0, 10, 21]], [1], 2),
        # COCO evaluation matches greedily, each detection to its best free truth: A takes the 1st
        # truth (IoU 1 over 0.5 with the 2nd), so B (IoU 0 with the 2nd) is false and the 2nd
        # missed; a one-to-one assignment would have matched both, but mAP counts it this way
        ([[0, 0, 10, 10], [0, 5, 10, 10]], [1, 1], [[0, 0, 10, 10], [0, 0, 10, 5]], [1, 1], 2),
    ],
)
def test_errors_count_misses_and_false_detections(dets, det_labels, gts, gt_labels, expected):
    got = image_errors([7], coco(7, dets, det_labels, score=0.9), coco(7, gts, gt_labels))
    assert got == {7: expected}


def test_image_errors_skip_low_scores_and_crowds():
    dets = [
        {"image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "score": 0.9},  # hit
        {"image_id": 1, "category_id": 3, "bbox": [50, 50, 10, 10], "score": 0.4},  # below 0.5: ignored
        {"image_id": 2, "category_id": 3, "bbox": [0, 0, 10, 10], "score": 0.6},  # false
    ]
    truth = [
        {"image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10]},
        {"image_id": 1, "category_id": 3, "bbox": [30, 30, 5, 5]},  # missed
        {"image_id": 3, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1},  # crowd: no error
    ]
    assert image_errors([1, 2, 3, 4], dets, truth) == {1: 1, 2: 1, 3: 0, 4: 0}


def test_least_confidence_is_one_minus_the_mean_score_and_zero_when_empty():
    dets = [{"image_id": 1, "score": 0.9}, {"image_id": 1, "score": 0.5}, {"image_id": 2, "score": 0.2}]
    assert least_confidence([1, 2, 3], dets) == pytest.approx({1: 0.3, 2: 0.8, 3: 0.0})
