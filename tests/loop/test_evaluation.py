"""COCO evaluation against hand-computed COCOeval values, and prediction records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from det_al.errors import InputError
from det_al.loop.evaluation import METRIC_NAMES, evaluate_coco, format_table, outputs_to_results, predict
from det_al.data.segmentation import mask_to_rle, segmentation_to_mask

# Category ids are deliberately not contiguous: 7 and 3.
CATEGORIES = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]


def _gt(annotations):
    anns = []
    for i, (image_id, category_id, bbox) in enumerate(annotations, start=1):
        anns.append({"id": i, "image_id": image_id, "category_id": category_id, "bbox": list(bbox),
                     "area": float(bbox[2] * bbox[3]), "iscrowd": 0})
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 100},
                   {"id": 2, "file_name": "b.png", "width": 100, "height": 100}],
        "categories": CATEGORIES,
        "annotations": anns,
    }


def _det(image_id, category_id, bbox, score=0.9):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score}


# a small (20x20 = 400 < 32^2) and a medium (40x40 = 1600) object, both of category 7
GT = _gt([(1, 7, (10, 10, 20, 20)), (2, 7, (50, 50, 40, 40))])


def test_perfect_predictions_give_one():
    metrics = evaluate_coco(GT, [_det(1, 7, (10, 10, 20, 20)), _det(2, 7, (50, 50, 40, 40), 0.8)])["bbox"]
    for name in ("AP", "AP50", "AP75", "APs", "APm", "AR1", "AR10", "AR100", "ARs", "ARm"):
        assert metrics[name] == pytest.approx(1.0), name
    # no large objects: undefined, -1 as in COCOeval
    assert metrics["APl"] == -1.0 and metrics["ARl"] == -1.0


def test_one_of_two_objects_missed():
    # Found: the small one (precision 1 up to recall 0.5, then nothing). COCO's AP interpolates
    # precision at 101 recall points 0.00..1.00: the 51 points <= 0.5 have precision 1 -> 51/101.
    metrics = evaluate_coco(GT, [_det(1, 7, (10, 10, 20, 20))])["bbox"]
    assert metrics["AP"] == pytest.approx(51 / 101)
    assert metrics["AP50"] == pytest.approx(51 / 101)
    assert metrics["AR1"] == pytest.approx(0.5)
    assert metrics["AR100"] == pytest.approx(0.5)
    assert metrics["APs"] == pytest.approx(1.0) and metrics["ARs"] == pytest.approx(1.0)
    assert metrics["APm"] == 0.0 and metrics["ARm"] == 0.0


def test_partial_overlap_counts_only_at_low_iou_thresholds():
    # IoU = (40 x 25.6) / (40 x 40) = 0.64: a match at IoU thresholds 0.50, 0.55, 0.60 only,
    # so AP over the ten thresholds 0.50:0.95 is 3/10.
    gt = _gt([(1, 3, (10, 10, 40, 40))])
    metrics = evaluate_coco(gt, [_det(1, 3, (10, 10, 40, 25.6))])["bbox"]
    assert metrics["AP"] == pytest.approx(0.3)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AR100"] == pytest.approx(0.3)


def test_wrong_category_is_a_miss():
    metrics = evaluate_coco(GT, [_det(1, 3, (10, 10, 20, 20)), _det(2, 3, (50, 50, 40, 40))])["bbox"]
    assert metrics["AP"] == 0.0 and metrics["AR100"] == 0.0


def test_empty_results_give_zeros():
    metrics = evaluate_coco(GT, [], ("bbox", "segm"))
    assert set(metrics) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        assert list(metrics[iou_type]) == list(METRIC_NAMES)
        assert metrics[iou_type]["AP"] == 0.0 and metrics[iou_type]["AR100"] == 0.0
        assert metrics[iou_type]["APl"] == -1.0  # no large ground truth at all


def test_segm_with_perfect_masks():
    h = w = 100
    masks = np.zeros((2, h, w), np.uint8)
    masks[0, 10:30, 10:40] = 1
    masks[1, 60:90, 50:70] = 1
    gt = _gt([(1, 7, (10, 10, 30, 20)), (1, 3, (50, 60, 20, 30))])
    for ann, m in zip(gt["annotations"], masks):
        ann["segmentation"] = mask_to_rle(m)
    results = [
        {**_det(1, 7, (10, 10, 30, 20)), "segmentation": mask_to_rle(masks[0])},
        {**_det(1, 3, (50, 60, 20, 30)), "segmentation": mask_to_rle(masks[1])},
    ]
    metrics = evaluate_coco(gt, results, ("bbox", "segm"))
    assert metrics["bbox"]["AP"] == pytest.approx(1.0)
    assert metrics["segm"]["AP"] == pytest.approx(1.0)
    # part of the first mask only: mask IoU 320/600 = 0.53 -> a match at IoU 0.50 only; the dog
    # stays perfect
    half = masks[0].copy()
    half[:, 26:] = 0
    results[0]["segmentation"] = mask_to_rle(half)
    segm = evaluate_coco(gt, results, ("segm",))["segm"]
    assert segm["AP50"] == pytest.approx(1.0)
    assert segm["AP75"] == pytest.approx(0.5)  # mean over the two categories: 0 and 1


def test_ground_truth_without_area_or_segmentation_is_completed_not_modified():
    gt = _gt([(1, 7, (10, 10, 20, 20))])
    del gt["annotations"][0]["area"]
    box = np.zeros((100, 100), np.uint8)
    box[10:30, 10:30] = 1
    results = [{**_det(1, 7, (10, 10, 20, 20)), "segmentation": mask_to_rle(box)}]
    metrics = evaluate_coco(gt, results, ("bbox", "segm"))
    assert metrics["bbox"]["AP"] == pytest.approx(1.0)
    assert metrics["segm"]["AP"] == pytest.approx(1.0)  # the box stands in for the mask
    assert "area" not in gt["annotations"][0] and "segmentation" not in gt["annotations"][0]
    assert results[0]["bbox"] == [10, 10, 20, 20]


def test_bad_results_are_input_errors():
    with pytest.raises(InputError, match="image id 99"):
        evaluate_coco(GT, [_det(99, 7, (0, 0, 5, 5))])
    with pytest.raises(InputError, match="segmentation"):
        evaluate_coco(GT, [_det(1, 7, (0, 0, 5, 5))], ("segm",))


def test_outputs_to_results_maps_labels_boxes_and_masks():
    masks = torch.zeros(3, 1, 8, 10)
    masks[0, 0, 1:3, 2:6] = 0.9
    masks[1, 0, 4:8, 0:2] = 0.4  # below the 0.5 threshold: an empty mask
    output = {
        "boxes": torch.tensor([[2.0, 1.0, 6.0, 3.0], [0.0, 4.0, 2.0, 8.0], [1.0, 1.0, 2.0, 2.0]]),
        "scores": torch.tensor([0.9, 0.5, 0.4]),
        "labels": torch.tensor([2, 1, 0]),  # label 0 (background) is dropped
        "masks": masks,
    }
    results = outputs_to_results([output], [42], CATEGORIES)
    assert [r["category_id"] for r in results] == [3, 7]  # label l -> CATEGORIES[l - 1]["id"]
    assert results[0]["bbox"] == [2.0, 1.0, 4.0, 2.0]
    assert results[1]["bbox"] == [0.0, 4.0, 2.0, 4.0]
    assert all(r["image_id"] == 42 for r in results)
    mask0 = segmentation_to_mask(results[0]["segmentation"], 8, 10)
    assert mask0.sum() == 8 and mask0[1:3, 2:6].all()
    assert segmentation_to_mask(results[1]["segmentation"], 8, 10).sum() == 0
    assert "segmentation" not in outputs_to_results([{k: v for k, v in output.items() if k != "masks"}], [1], CATEGORIES)[0]


def test_format_table_lists_every_metric():
    table = format_table({"bbox": dict(zip(METRIC_NAMES, [0.5] * 11 + [-1.0]))})
    lines = table.splitlines()
    assert len(lines) == 2 + len(METRIC_NAMES)
    assert lines[2].startswith("AP ") and "0.500" in lines[2]
    assert lines[-1].startswith("ARl") and lines[-1].endswith("n/a")


def test_predict_with_a_tiny_model(tmp_path):
    from PIL import Image

    from det_al.config import ModelConfig
    from det_al.models.build import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig("maskrcnn_tiny", 3, {"min_size": 64, "max_size": 64, "box_score_thresh": 0.0,
                                                         "box_detections_per_img": 5}))
    model.train()
    rng = np.random.default_rng(0)
    coco = {"images": [], "categories": CATEGORIES, "annotations": []}
    for i in (5, 6):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        coco["images"].append({"id": i, "file_name": f"{i}.png", "width": 64, "height": 48})
    results = predict(model, coco, tmp_path, CATEGORIES, batch_size=2)
    assert model.training  # the mode is restored
    assert results and {r["image_id"] for r in results} <= {5, 6}
    assert {r["category_id"] for r in results} <= {7, 3}
    assert all(r["segmentation"]["size"] == [48, 64] for r in results)
    coco["images"].append({"id": 7, "file_name": "missing.png"})
    with pytest.raises(InputError, match="missing.png"):
        predict(model, coco, tmp_path, CATEGORIES)
