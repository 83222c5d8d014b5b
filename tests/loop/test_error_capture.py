import math

import numpy as np
import pytest

from det_al.loop.error_capture import (
    MEASURES,
    auroc,
    capture_measures,
    image_errors,
    mean_ci,
    recall_at_top,
    spearman,
    top_probability,
)

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def _gt(boxes_by_image: dict[int, list[tuple[int, list[float]]]], crowd: set[int] = frozenset()) -> dict:
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in boxes_by_image]
    annotations = [
        {"id": 0 if (i, k) == (1, 0) else 100 * i + k, "image_id": i, "category_id": c, "bbox": b,
         "iscrowd": int(i in crowd)}
        for i, objs in boxes_by_image.items()
        for k, (c, b) in enumerate(objs)
    ]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def _det(image_id: int, category_id: int, bbox: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def test_image_errors_counts_misses_and_false_detections():
    gt = _gt({
        1: [(1, [0, 0, 10, 10]), (1, [20, 20, 10, 10])],  # the first annotation has id 0
        2: [],
        3: [(2, [40, 40, 20, 20])],
        4: [],
        5: [(1, [0, 0, 10, 10])],
        6: [(1, [0, 0, 10, 10])],
        7: [(1, [0, 0, 30, 30])],
    }, crowd={7})
    dets = [
        _det(1, 1, [0, 0, 10, 10], 0.9),    # found
        _det(1, 2, [20, 20, 10, 10], 0.8),  # right box, wrong class: a miss and a false detection
        _det(1, 1, [50, 50, 10, 10], 0.3),  # below the threshold: not counted
        _det(2, 1, [10, 10, 10, 10], 0.6),  # on a background-only image
        _det(5, 1, [5, 0, 10, 10], 0.9),    # IoU 50 / 150 = 1/3 < 0.5
        _det(6, 1, [0, 0, 10, 10], 0.9),    # found ...
        _det(6, 1, [0, 0, 10, 10], 0.7),    # ... and found twice: one false detection
        _det(7, 1, [0, 0, 30, 30], 0.9),    # on a crowd region: ignored
    ]
    e = image_errors(gt, dets, score_threshold=0.5, iou_threshold=0.5)
    assert e[1] == {"n_gt": 2, "n_det": 2, "fn": 1, "fp": 1, "count": 2, "normalised": 0.5, "missed": True}
    assert e[2] == {"n_gt": 0, "n_det": 1, "fn": 0, "fp": 1, "count": 1, "normalised": 1.0, "missed": False}
    assert e[3] == {"n_gt": 1, "n_det": 0, "fn": 1, "fp": 0, "count": 1, "normalised": 1.0, "missed": True}
    assert e[4] == {"n_gt": 0, "n_det": 0, "fn": 0, "fp": 0, "count": 0, "normalised": 0.0, "missed": False}
    assert e[5]["count"] == 2 and e[5]["normalised"] == 1.0
    assert e[6] == {"n_gt": 1, "n_det": 2, "fn": 0, "fp": 1, "count": 1, "normalised": 1 / 3, "missed": False}
    assert e[7]["count"] == 0 and not e[7]["missed"]
    # a lower IoU threshold accepts image 5's box; a lower score threshold adds image 1's third
    low = image_errors(gt, dets, score_threshold=0.2, iou_threshold=0.3)
    assert low[5]["count"] == 0
    assert low[1]["fp"] == 2 and low[1]["n_det"] == 3


def test_image_errors_without_detections():
    gt = _gt({1: [(1, [0, 0, 10, 10])], 2: []})
    e = image_errors(gt, [])
    assert e[1]["fn"] == 1 and e[1]["missed"] and e[2]["count"] == 0


def test_spearman():
    # rank differences 0, -1, 1, 0: rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([4, 3, 2, 1], [1, 3, 2, 4]) == pytest.approx(-0.8)
    assert spearman([0.5] * 4, [1, 3, 2, 4]) == 0.0  # a constant score ranks nothing
    with pytest.raises(ValueError, match="3 values"):
        spearman([1, 2, 3], [1, 2])


def test_auroc():
    # positives 0.9, 0.5 against negatives 0.5, 0.1: 1 + 1 + 0.5 + 1 of 4 pairs
    assert auroc([0.9, 0.5, 0.5, 0.1], [True, True, False, False]) == 0.875
    assert auroc([0.1, 0.2, 0.3], [False, False, True]) == 1.0
    assert auroc([0.3, 0.2, 0.1], [False, False, True]) == 0.0
    assert auroc([0.0, 0.0, 0.0], [True, False, False]) == 0.5
    assert math.isnan(auroc([0.1, 0.2], [False, False]))


def test_top_probability_breaks_ties_evenly():
    assert top_probability([3, 2, 2, 1], 2).tolist() == [1.0, 0.5, 0.5, 0.0]
    assert top_probability([1, 1, 1, 1], 1).tolist() == [0.25] * 4
    assert top_probability([5, 4, 3], 3).tolist() == [1.0, 1.0, 1.0]


def test_recall_at_top():
    error = [9, 0, 0, 0, 0, 0, 0, 0, 0, 1]  # 10 images, k = 1: the worst is image 0
    assert recall_at_top(np.arange(10)[::-1], error) == 1.0
    assert recall_at_top(np.arange(10), error) == 0.0
    assert recall_at_top(np.zeros(10), error) == pytest.approx(0.1)  # constant: k / N
    # k = ceil(0.25 * 6) = 2; worst two: images 0 and 1; the score's top two: images 0 and 2
    assert recall_at_top([5, 2, 3, 0, 0, 0], [4, 3, 0, 0, 0, 0], fraction=0.25) == 0.5
    # error ties: worst two of [2, 1, 1, 1]: image 0 and one of 1..3 (1/3 each); the score's
    # top two, images 0 and 1, catch 1 + 1/3 of 2
    assert recall_at_top([9, 8, 0, 0], [2, 1, 1, 1], fraction=0.5) == pytest.approx(2 / 3)


def test_mean_ci():
    # mean 2, sd 1, t_{0.975, 2} = 4.302653: half-width 4.302653 / sqrt(3) = 2.484138
    mean, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and lo == pytest.approx(-0.484138, abs=1e-6) and hi == pytest.approx(4.484138, abs=1e-6)
    mean, lo, hi = mean_ci([0.5, float("nan"), 0.5])  # NaN left out; no spread, zero width
    assert (mean, lo, hi) == (0.5, 0.5, 0.5)
    mean, lo, hi = mean_ci([0.7])
    assert mean == 0.7 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(x) for x in mean_ci([]))


def test_capture_measures_keys_and_values():
    errors = {"count": [3, 0, 1, 0], "normalised": [1.0, 0.0, 0.5, 0.0], "missed": [True, False, True, False]}
    m = capture_measures([0.9, 0.1, 0.5, 0.2], errors, fraction=0.25)
    assert tuple(m) == MEASURES
    assert m["spearman"] == pytest.approx(spearman([0.9, 0.1, 0.5, 0.2], [3, 0, 1, 0]))
    assert m["auroc_missed"] == 1.0 and m["recall_at_10pct"] == 1.0 and m["recall_at_10pct_norm"] == 1.0
