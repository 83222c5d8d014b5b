"""Label Studio export and import, on hand-made selections (no server: see test_label_studio_server.py)."""

from __future__ import annotations

import copy
import math
import json
import random
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from det_al.cli import main
from det_al.errors import InputError
from det_al.annotation.label_studio import (
    box_to_percent,
    labeling_config,
    local_files_url,
    mask_to_polygons,
    prediction_scores,
    prefixed_url,
    selection_to_tasks,
    validate_percent_value,
)
from det_al.annotation.label_studio_import import region_to_annotation, tasks_to_coco
from det_al.data.segmentation import segmentation_to_mask

# mask_b traced by findContours: boundary pixel centres, (x, y) pixels
POLYGON_B = [[10, 5], [10, 14], [19, 14], [19, 10], [20, 9], [29, 9], [29, 5]]


def url(image: dict) -> str:
    return "https://h/" + image["file_name"]


def finished(tasks: list[dict]) -> list[dict]:
    """What Label Studio's JSON export gives when every prediction was accepted unchanged."""
    out = []
    for i, task in enumerate(tasks, start=1):
        result = copy.deepcopy(task["predictions"][0]["result"])
        out.append({"id": i, "data": task["data"], "annotations": [
            {"id": 100 + i, "was_cancelled": False, "result": result, "updated_at": "2026-01-01T00:00:00Z"}]})
    return out


def test_image_urls(tmp_path):
    assert local_files_url(tmp_path / "pool" / "a b#1.jpg", tmp_path) == "/data/local-files/?d=pool/a%20b%231.jpg"
    with pytest.raises(InputError, match="not under the local-files document root"):
        local_files_url(tmp_path / "x.jpg", tmp_path / "pool")
    assert prefixed_url("d/a b.jpg", "https://h/img") == "https://h/img/d/a%20b.jpg"
    assert prefixed_url("d/a b.jpg", "s3://bucket/p/") == "s3://bucket/p/d/a b.jpg"


@pytest.mark.parametrize("bbox, size, expected", [
    ([2.5, 3.25, 10, 8], (40, 30), {"x": 6.25, "y": 10.8333333, "width": 25.0, "height": 26.6666667}),
    ([0, 0, 50, 40], (50, 40), {"x": 0.0, "y": 0.0, "width": 100.0, "height": 100.0}),
    ([-2, 28, 50, 10], (40, 30), {"x": 0.0, "y": 93.3333333, "width": 100.0, "height": 6.6666667}),  # clipped
])
def test_box_to_percent(bbox, size, expected):
    value = box_to_percent(bbox, *size)
    assert value == pytest.approx(expected, abs=1e-6)
    validate_percent_value({**value, "rectanglelabels": ["cat"]}, "rectanglelabels")


def test_box_to_percent_never_leaves_the_image():
    rng = random.Random(0)
    for _ in range(2000):
        width, height = rng.randint(1, 5000), rng.randint(1, 5000)
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        value = box_to_percent([x, y, width - x, height - y + rng.choice([0, 1e-9])], width, height)
        assert value["x"] + value["width"] <= 100.0 and value["y"] + value["height"] <= 100.0


@pytest.mark.parametrize("value, message", [
    ({"x": 60.0, "y": 0.0, "width": 40.5, "height": 10.0}, "leaves the image"),
    ({"x": -1.0, "y": 0.0, "width": 4.0, "height": 10.0}, "x=-1.0"),
    ({"x": 1.0, "y": 0.0, "width": float("nan"), "height": 10.0}, "width=nan"),
])
def test_validate_rectangle(value, message):
    with pytest.raises(ValueError, match=message):
        validate_percent_value(value, "rectanglelabels")


def test_validate_polygon():
    with pytest.raises(ValueError, match="at least 3"):
        validate_percent_value({"points": [[1, 1], [2, 2]]}, "polygonlabels")
    with pytest.raises(ValueError, match="not a pair"):
        validate_percent_value({"points": [[1, 1], [2, 2], [101, 3]]}, "polygonlabels")


def test_mask_to_polygons_traces_the_largest_part_first(hand_scores):
    mask = hand_scores.mask_b().copy()
    mask[30:32, 40:42] = True  # a small second part
    polygons = mask_to_polygons(mask)
    assert polygons[0].tolist() == POLYGON_B
    assert polygons[1].tolist() == [[40, 30], [40, 31], [41, 31], [41, 30]]
    assert mask_to_polygons(np.zeros((4, 4), bool)) == []


def test_tasks_in_rank_order_with_one_prediction_each(hand_scores):
    tasks = selection_to_tasks(hand_scores.select(3), url, "det_al-7")
    assert [t["data"]["image_id"] for t in tasks] == [11, 10, 12]
    assert tasks[0]["data"] == {"image": "https://h/b.png", "image_id": 11, "file_name": "b.png", "width": 50,
                                "height": 40, "rank": 1, "informativeness": 0.9}
    assert [len(t["predictions"]) for t in tasks] == [1, 1, 1]
    # uncertainty sampling serves the lowest score first: the most informative image
    assert [t["predictions"][0]["score"] for t in tasks] == pytest.approx([0.1, 0.5, 0.8])
    assert {t["predictions"][0]["model_version"] for t in tasks} == {"det_al-7"}
    box_a = tasks[1]["predictions"][0]["result"][0]
    assert box_a["type"] == "rectanglelabels" and box_a["score"] == 0.9
    assert box_a["value"]["rectanglelabels"] == ["cat"]
    assert (box_a["original_width"], box_a["original_height"]) == (40, 30)
    polygon = tasks[0]["predictions"][0]["result"][1]
    assert polygon["type"] == "polygonlabels" and polygon["from_name"] == "polygon" and polygon["score"] == 0.75
    assert np.allclose(polygon["value"]["points"], [[x * 2, y * 2.5] for x, y in POLYGON_B])
    ids = [r["id"] for t in tasks for r in t["predictions"][0]["result"]]
    assert len(ids) == len(set(ids))


def test_prediction_scores_keep_the_order():
    assert prediction_scores([0.9, 0.5, 0.2]) == [0.1, 0.5, 0.8]
    assert prediction_scores([3.0, 1.5, 0.0]) == [0.0, 0.5, 1.0]  # a "sum" reduction: scaled by the largest
    assert prediction_scores([]) == []


def test_boxes_only_when_asked(hand_scores):
    tasks = selection_to_tasks(hand_scores.select(1), url, "v", polygons=False)
    assert [r["type"] for r in tasks[0]["predictions"][0]["result"]] == ["rectanglelabels", "rectanglelabels"]
    assert tasks[0]["predictions"][0]["result"][1]["value"] == {
        "x": 20.0, "y": 12.5, "width": 40.0, "height": 25.0, "rotation": 0, "rectanglelabels": ["cat"]}


def test_labeling_config_matches_the_regions(hand_scores):
    config = ET.fromstring(labeling_config(hand_scores.categories, polygons=True))
    image = config.find("Image")
    assert image.get("name") == "image" and image.get("value") == "$image"
    controls = {c.get("name"): c for c in config if c.tag.endswith("Labels")}
    assert set(controls) == {"bbox", "polygon"}
    for control in controls.values():
        assert control.get("toName") == "image"
        assert [(lab.get("value"), lab.get("category")) for lab in control] == [("cat", "3"), ("dog", "7")]
    for task in selection_to_tasks(hand_scores.select(3), url, "v"):
        assert "image" in task["data"]
        for region in task["predictions"][0]["result"]:
            assert region["from_name"] in controls and region["to_name"] == "image"
    names = ET.fromstring(labeling_config([{"id": 1, "name": 'a "quoted" <name> & co'}]))
    assert names.find("RectangleLabels/Label").get("value") == 'a "quoted" <name> & co'
    assert ET.fromstring(labeling_config(hand_scores.categories)).find("PolygonLabels") is None


def test_accepted_predictions_come_back_unchanged(hand_scores):
    selection = hand_scores.select(3)
    labels, report = tasks_to_coco(finished(selection_to_tasks(selection, url, "v")), selection)
    assert report.skipped == [] and report.n_annotations == 4
    assert [im["id"] for im in labels["images"]] == [11, 10, 12]
    assert "rank" not in labels["images"][0]
    assert labels["categories"] == hand_scores.categories
    by_source = {(a["image_id"], a["category_id"]): a for a in labels["annotations"]}
    for original in selection["annotations"]:
        back = by_source[(original["image_id"], original["category_id"])]
        if "segmentation" in original:  # polygon: traced points, bbox of the points
            assert back["segmentation"] == [[float(v) for p in POLYGON_B for v in p]]
            assert back["bbox"] == pytest.approx([10, 5, 19, 9], abs=0.01)
            mask = segmentation_to_mask(back["segmentation"], 40, 50)
            iou = (mask & hand_scores.mask_b()).sum() / (mask | hand_scores.mask_b()).sum()
            assert iou > 0.7  # the polygon runs through boundary pixel centres
        else:
            assert back["bbox"] == pytest.approx(original["bbox"], abs=0.01)
    assert [a["id"] for a in labels["annotations"]] == [1, 2, 3, 4]


def test_cancelled_unlabelled_and_empty_tasks_are_skipped_and_reported(hand_scores):
    selection = hand_scores.select(3)
    export = finished(selection_to_tasks(selection, url, "v"))
    export[0]["annotations"][0]["was_cancelled"] = True
    export[1]["annotations"] = []
    export[2]["annotations"][0]["result"] = []
    labels, report = tasks_to_coco(export, selection)
    assert labels["images"] == [] and labels["annotations"] == []
    assert [(s["image_id"], s["reason"]) for s in report.skipped] == [
        (11, "cancelled"), (10, "no annotation"), (12, "empty result")]
    assert "skipped 1 cancelled, 1 empty result, 1 no annotation" in report.summary()
    labels, report = tasks_to_coco(export, selection, keep_empty=True)
    assert [im["id"] for im in labels["images"]] == [12] and labels["annotations"] == []


def test_latest_annotation_wins(hand_scores):
    selection = hand_scores.select(2)
    export = finished(selection_to_tasks(selection, url, "v"))[1:]  # image a only
    newer = copy.deepcopy(export[0]["annotations"][0])
    newer.update(id=999, updated_at="2026-02-01T00:00:00Z")
    newer["result"][0]["value"]["x"] = 50.0
    export[0]["annotations"].insert(0, newer)
    labels, _ = tasks_to_coco(export, selection)
    assert labels["annotations"][0]["bbox"][0] == pytest.approx(20.0)


def test_region_conversion_details():
    ids = {"cat": 3, "dog": 7}
    rotated = {"type": "rectanglelabels", "original_width": 100, "original_height": 50,
               "value": {"x": 50, "y": 20, "width": 10, "height": 20, "rotation": 90, "rectanglelabels": ["dog"]}}
    ann, _ = region_to_annotation(rotated, 100, 50, ids)
    # 10 x 10 px box at (50, 10), turned 90 degrees clockwise about its top-left corner
    assert ann["bbox"] == pytest.approx([40, 10, 10, 10]) and ann["category_id"] == 7
    assert region_to_annotation({"type": "choices", "value": {}}, 100, 50, ids) == (None, "choices")
    assert region_to_annotation({"type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 1, "height": 1,
                                 "rectanglelabels": []}}, 100, 50, ids)[1] == "rectanglelabels without label"
    with pytest.raises(InputError, match="label 'cow'"):
        region_to_annotation({**rotated, "value": {**rotated["value"], "rectanglelabels": ["cow"]}}, 100, 50, ids)
    with pytest.raises(InputError, match="100x50 image, but the selection says 50x100"):
        region_to_annotation(rotated, 50, 100, ids)


@pytest.mark.parametrize("value, reason", [
    ({"x": float("nan"), "y": 1, "width": 5, "height": 5}, "rectangle coordinates missing or not finite numbers"),
    ({"x": 1, "y": 1, "width": float("inf"), "height": 5}, "rectangle coordinates missing or not finite numbers"),
    ({"x": 1, "y": 1, "width": 5}, "rectangle coordinates missing or not finite numbers"),
    ({"x": "1", "y": 1, "width": 5, "height": 5}, "rectangle coordinates missing or not finite numbers"),
    ({"x": 1, "y": 1, "width": 5, "height": 5, "rotation": float("nan")},
     "rectangle coordinates missing or not finite numbers"),
    ({"x": 50, "y": 1, "width": -5, "height": 5}, "rectangle of negative or zero size"),
    ({"x": 50, "y": 1, "width": 5, "height": 0}, "rectangle of negative or zero size"),
])
def test_a_task_with_a_broken_region_is_skipped_whole(hand_scores, value, reason):
    """Never written as a box, and never imported without it (its object would become background)."""
    selection = hand_scores.select(3)
    export = finished(selection_to_tasks(selection, url, "v"))
    for task in export[:2]:  # image b's box (beside its mask's polygon), and image a's one box
        region = next(r for r in task["annotations"][0]["result"] if r["type"] == "rectanglelabels")
        region["value"] = {**value, "rectanglelabels": region["value"]["rectanglelabels"]}
    labels, report = tasks_to_coco(export, selection)
    assert [im["id"] for im in labels["images"]] == [12]
    assert [(s["image_id"], s["reason"]) for s in report.skipped] == [(11, f"bad region: {reason}"),
                                                                      (10, f"bad region: {reason}")]
    assert all(math.isfinite(v) and v >= 0 for a in labels["annotations"] for v in a["bbox"])


def test_a_polygon_with_a_non_finite_point_skips_its_task(hand_scores):
    selection = hand_scores.select(1)
    export = finished(selection_to_tasks(selection, url, "v"))
    polygon = next(r for r in export[0]["annotations"][0]["result"] if r["type"] == "polygonlabels")
    polygon["value"]["points"][1] = [float("nan"), 3.0]
    labels, report = tasks_to_coco(export, selection)
    assert labels["images"] == [] and report.skipped[0]["reason"] == "bad region: polygon points missing or not finite numbers"


def test_unknown_image_is_an_error(hand_scores):
    selection = hand_scores.select(3)
    export = finished(selection_to_tasks(selection, url, "v"))
    export[0]["data"]["image_id"] = 99
    with pytest.raises(InputError, match="image 99 is not in the selection"):
        tasks_to_coco(export, selection)
    with pytest.raises(InputError, match="JSON list of tasks"):
        tasks_to_coco({"tasks": []}, selection)


def test_export_and_import_commands(hand_scores, tmp_path, capsys):
    paths = hand_scores.write(tmp_path)
    sel = tmp_path / "sel"
    assert main(["select", "--ranking", str(paths["ranking"]), "--budget", "3", "--out", str(sel)]) == 0
    out = tmp_path / "ls"
    assert main(["export", "label-studio", "--selection", str(sel / "selection.json"), "--out", str(out),
                 "--image-root", str(paths["images"]), "--local-files-root", str(tmp_path),
                 "--model-version", "m1"]) == 0
    tasks = json.loads((out / "tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks] == [
        "/data/local-files/?d=images/b.png", "/data/local-files/?d=images/a.png", "/data/local-files/?d=images/sub/c.png"]
    assert ET.fromstring((out / "labeling_config.xml").read_text()).find("PolygonLabels") is not None
    export = finished(tasks)
    export[2]["annotations"][0]["was_cancelled"] = True
    (out / "export.json").write_text(json.dumps(export))
    capsys.readouterr()
    assert main(["import", "label-studio", str(out / "export.json"), "--selection", str(sel / "selection.json"),
                 "--out", str(tmp_path / "labels")]) == 0
    assert "imported 3 annotations on 2 of 3 images; skipped 1 cancelled" in capsys.readouterr().out
    labels = json.loads((tmp_path / "labels" / "labels.json").read_text())
    assert [im["id"] for im in labels["images"]] == [11, 10]
    report = json.loads((tmp_path / "labels" / "import_report.json").read_text())
    assert report["skipped"] == [{"task": 3, "image_id": 12, "file_name": "sub/c.png", "reason": "cancelled"}]


def test_export_checks_image_sizes_after_exif_rotation(hand_scores, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40x20, shown rotated 90 degrees: 20x40
    Image.new("RGB", (40, 20)).save(images / "r.jpg", exif=exif)
    selection = {"images": [{"id": 1, "file_name": "r.jpg", "width": 40, "height": 20, "rank": 1,
                             "informativeness": 0.5}], "categories": hand_scores.categories, "annotations": []}
    (tmp_path / "selection.json").write_text(json.dumps(selection))
    args = ["export", "label-studio", "--selection", str(tmp_path / "selection.json"), "--out", str(tmp_path / "o"),
            "--image-root", str(images), "--url-prefix", "https://h"]
    assert main(args) == 2
    assert "is 20x40 (after EXIF rotation) but the selection says 40x20" in capsys.readouterr().err
    selection["images"][0].update(width=20, height=40)
    (tmp_path / "selection.json").write_text(json.dumps(selection))
    assert main(args) == 0
    assert main(args[:-4] + ["--local-files-root", str(tmp_path)]) == 2
    assert "--local-files-root needs --image-root" in capsys.readouterr().err


def test_import_and_merge_from_python(hand_scores, tmp_path):
    import det_al

    selection = hand_scores.select(3)
    tasks = finished(selection_to_tasks(selection, url, "v"))
    done = det_al.import_label_studio(tasks, selection, tmp_path / "labels")
    labels, report = tasks_to_coco(tasks, selection)
    assert done.labels == labels and done.report.to_dict() == report.to_dict()
    assert json.loads(done.files["labels"].read_text()) == labels
    assert json.loads(done.files["report"].read_text()) == report.to_dict()
    assert det_al.import_label_studio(tasks, det_al.Selection(selection)).files == {}  # nothing written
    train = {"images": [], "annotations": [], "categories": hand_scores.categories}
    merged = det_al.merge(train, done.labels, selection, out_dir=tmp_path / "next")
    assert [im["id"] for im in merged.train["images"]] == [11, 10, 12] and merged.pool["images"] == []
    assert len(merged.train["annotations"]) == 4
    assert json.loads((tmp_path / "next" / "train.json").read_text()) == merged.train
    assert json.loads((tmp_path / "next" / "pool.json").read_text()) == merged.pool
    with pytest.raises(InputError, match="would overwrite an input"):
        det_al.merge(tmp_path / "next" / "train.json", done.files["labels"], out_dir=tmp_path / "next")
