"""det_al's CVAT files read by datumaro (the library CVAT's format code derives from), masks compared
pixel for pixel, the mask RLE compared with ``cvat_sdk.masks.encode_mask``, and round trips
det_al -> datumaro (import, then its own CVAT/COCO export) -> det-al import.

datumaro pins opencv/Pillow versions older than the test environment's, so datumaro and
cvat-sdk live in their own virtual environment; ``DET_AL_DATUMARO_PYTHON`` names its Python
(default ``/tmp/dm-venv/bin/python``; ``.ci/setup_annotation_tools.sh`` installs it). One
subprocess does all the datumaro work. Without it the tests skip, unless
``DET_AL_REQUIRE_ANNOTATION_TOOLS=1`` (CI), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from det_al.cli import main
from det_al.annotation.cvat import frame_names, mask_to_cvat_rle
from det_al.data.segmentation import segmentation_to_mask

TOOL_SCRIPT = r"""
import json, os, sys
import numpy as np
from datumaro.components.annotation import AnnotationType
from datumaro.components.dataset import Dataset
from cvat_sdk.masks import encode_mask

job = json.load(sys.stdin)
out = {"datasets": {}}
for key, (path, fmt) in job["imports"].items():
    dataset = Dataset.import_from(path, fmt)
    labels = dataset.categories()[AnnotationType.label]
    items = []
    for item in dataset:
        annotations = []
        for ann in item.annotations:
            entry = {"type": ann.type.name, "label": labels[ann.label].name,
                     "attributes": {k: v for k, v in ann.attributes.items() if isinstance(v, (str, int, float, bool))}}
            if ann.type == AnnotationType.bbox:
                entry["bbox"] = [float(v) for v in ann.get_bbox()]
            elif ann.type == AnnotationType.polygon:
                entry["points"] = [float(v) for v in ann.points]
            elif ann.type == AnnotationType.mask:
                entry["mask"] = os.path.join(job["masks_dir"], f"{key}_{len(os.listdir(job['masks_dir']))}.npy")
                np.save(entry["mask"], np.asarray(ann.image).astype(bool))
            annotations.append(entry)
        items.append({"id": item.id, "attributes": {k: v for k, v in item.attributes.items() if isinstance(v, int)},
                      "annotations": annotations})
    out["datasets"][key] = items
    if key in job["reexport"]:
        dataset.export(job["reexport"][key][0], job["reexport"][key][1], save_media=False)
out["encode_mask"] = [encode_mask(np.load(path)) for path in job["reference_masks"]]
print(json.dumps(out))
"""


def _dataset_dir(root: Path, annotation_file: Path, images: Path, selection: dict, under: str = "") -> Path:
    """A dataset folder as datumaro reads it: the annotation file (in ``under``) and images/<frame name>."""
    (root / "images").mkdir(parents=True)
    (root / under).mkdir(parents=True, exist_ok=True)
    shutil.copy(annotation_file, root / under / annotation_file.name)
    for image, name in zip(selection["images"], frame_names(selection["images"])):
        shutil.copy(images / image["file_name"], root / "images" / name)
    return root


@pytest.fixture(scope="module")
def parsed(hand_scores, tmp_path_factory, annotation_tool):
    python = annotation_tool("DET_AL_DATUMARO_PYTHON", "/tmp/dm-venv/bin/python", "datumaro/cvat-sdk",
                             "a Python with datumaro and cvat-sdk")
    root = tmp_path_factory.mktemp("datumaro")
    paths = hand_scores.write(root)
    selection_path = root / "sel" / "selection.json"
    assert main(["select", "--ranking", str(paths["ranking"]), "--budget", "3", "--out", str(selection_path.parent)]) == 0
    common = ["--selection", str(selection_path), "--image-root", str(paths["images"])]
    assert main(["export", "cvat", *common, "--out", str(root / "mask")]) == 0
    assert main(["export", "cvat", *common, "--out", str(root / "polygon"), "--shapes", "polygon"]) == 0
    selection = json.loads(selection_path.read_text())
    rng = np.random.default_rng(1)
    reference_masks = [hand_scores.mask_b()] + [rng.random((9, 11)) < p for p in (0.2, 0.5, 0.8)]
    (root / "masks").mkdir()
    mask_files = []
    for i, mask in enumerate(reference_masks):
        mask_files.append(str(root / f"reference{i}.npy"))
        np.save(mask_files[-1], mask)
    job = {
        "imports": {
            "xml_mask": [str(_dataset_dir(root / "ds_mask", root / "mask" / "annotations.xml", paths["images"], selection)), "cvat"],
            "xml_polygon": [str(_dataset_dir(root / "ds_polygon", root / "polygon" / "annotations.xml", paths["images"], selection)), "cvat"],
            "coco": [str(_dataset_dir(root / "ds_coco", root / "mask" / "coco" / "annotations" / "instances_default.json",
                                      paths["images"], selection, "annotations")), "coco_instances"],
        },
        "reexport": {"xml_mask": [str(root / "re_cvat"), "cvat"], "coco": [str(root / "re_coco"), "coco_instances"]},
        "masks_dir": str(root / "masks"),
        "reference_masks": mask_files,
    }
    done = subprocess.run([str(python), "-c", TOOL_SCRIPT], input=json.dumps(job), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {"out": out, "root": root, "selection": selection, "selection_path": selection_path,
            "reference_masks": reference_masks}


def _by_item(items: list[dict]) -> dict[str, list[dict]]:
    return {item["id"]: item["annotations"] for item in items}


def test_datumaro_reads_the_cvat_xml(hand_scores, parsed):
    items = parsed["out"]["datasets"]["xml_mask"]
    assert sorted((item["attributes"]["frame"], item["id"]) for item in items) == [(0, "b"), (1, "a"), (2, "c")]
    anns = _by_item(items)
    box, mask = anns["b"]
    assert (box["type"], box["label"], box["bbox"]) == ("bbox", "dog", [0.0, 0.0, 50.0, 40.0])
    assert box["attributes"]["score"] == "0.6000"  # declared, so kept
    assert (mask["type"], mask["label"], mask["attributes"]["score"]) == ("mask", "cat", "0.7500")
    assert np.array_equal(np.load(mask["mask"]), hand_scores.mask_b())  # pixel for pixel
    assert anns["a"][0]["bbox"] == pytest.approx([2.5, 3.25, 10.0, 8.0], abs=0.005)
    assert anns["c"][0]["bbox"] == pytest.approx([30.0, 0.0, 2.0, 2.0])


def test_datumaro_reads_the_polygons(parsed):
    polygon = _by_item(parsed["out"]["datasets"]["xml_polygon"])["b"][1]
    assert polygon["type"] == "polygon" and polygon["label"] == "cat"
    assert polygon["points"] == [10, 5, 10, 14, 19, 14, 19, 10, 20, 9, 29, 9, 29, 5]


def test_datumaro_reads_the_coco_file(hand_scores, parsed):
    items = parsed["out"]["datasets"]["coco"]
    assert sorted((item["attributes"]["id"], item["id"]) for item in items) == [(1, "b"), (2, "a"), (3, "c")]
    anns = _by_item(items)
    kinds = sorted((a["type"], a["label"]) for a in anns["b"])
    assert kinds == [("bbox", "cat"), ("bbox", "dog"), ("mask", "cat")]  # ids 3 and 7 keep their labels
    mask = next(a for a in anns["b"] if a["type"] == "mask")
    assert np.array_equal(np.load(mask["mask"]), hand_scores.mask_b())
    assert mask["attributes"]["score"] == "0.7500"


def test_mask_rle_matches_cvat_sdk(parsed):
    for mask, reference in zip(parsed["reference_masks"], parsed["out"]["encode_mask"]):
        runs, left, top, width, height = mask_to_cvat_rle(mask)
        # cvat_sdk: runs + [x1, y1, x2, y2] with inclusive corners
        assert runs + [left, top, left + width - 1, top + height - 1] == reference


@pytest.mark.parametrize("export", ["re_cvat", "re_coco"])
def test_round_trip_through_datumaro_exports(hand_scores, parsed, export, tmp_path):
    root = parsed["root"]
    files = sorted((root / export).rglob("*.xml")) + sorted((root / export).rglob("*.json"))
    assert len(files) == 1, files
    # nobody edited the frames: after the real tool's re-export they are still the model's
    # pre-annotations, and are not imported as labels unless a person says the frames are finished
    assert main(["import", "cvat", str(files[0]), "--selection", str(parsed["selection_path"]),
                 "--out", str(tmp_path / "untouched")]) == 0
    report = json.loads((tmp_path / "untouched" / "import_report.json").read_text())
    assert report["n_images"] == 0 and [s["reason"] for s in report["skipped"]] == ["untouched pre-annotations"] * 3
    assert main(["import", "cvat", str(files[0]), "--selection", str(parsed["selection_path"]),
                 "--out", str(tmp_path), "--all-finished"]) == 0
    labels = json.loads((tmp_path / "labels.json").read_text())
    selection = parsed["selection"]
    assert sorted(im["id"] for im in labels["images"]) == [10, 11, 12]
    got = {}
    for ann in labels["annotations"]:
        got.setdefault((ann["image_id"], ann["category_id"]), []).append(ann)
    for original in selection["annotations"]:
        candidates = got[(original["image_id"], original["category_id"])]
        if "segmentation" in original:
            masked = [a for a in candidates if a.get("segmentation")]
            assert len(masked) == 1
            image = next(im for im in selection["images"] if im["id"] == original["image_id"])
            back = segmentation_to_mask(masked[0]["segmentation"], image["height"], image["width"])
            assert np.array_equal(back, hand_scores.mask_b())
            assert masked[0]["bbox"] == pytest.approx(original["bbox"], abs=0.01)
        else:
            assert any(a["bbox"] == pytest.approx(original["bbox"], abs=0.01) for a in candidates)
    expected = hand_scores.select(3)["annotations"]
    assert len(expected) == 4
