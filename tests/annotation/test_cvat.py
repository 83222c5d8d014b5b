"""CVAT export and import on hand-made selections (datumaro and cvat-sdk: test_cvat_datumaro.py)."""

from __future__ import annotations

import json
import zipfile
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from det_al.cli import main
from det_al.annotation.cvat import (
    cvat_rle_to_mask,
    frame_name,
    frame_names,
    mask_to_cvat_rle,
    selection_to_cvat_coco,
    selection_to_cvat_xml,
)
from det_al.annotation.cvat_import import cvat_coco_to_coco, cvat_xml_to_coco
from det_al.errors import InputError
from det_al.data.segmentation import segmentation_to_mask

POLYGON_B = [[10, 5], [10, 14], [19, 14], [19, 10], [20, 9], [29, 9], [29, 5]]


@pytest.fixture
def export_xml(hand_scores):
    """``export_xml(shapes, budget)``: the hand-written selection of ``budget`` images and its CVAT XML."""
    def export(shapes: str = "mask", budget: int = 3) -> tuple[dict, str]:
        selection = hand_scores.select(budget)
        return selection, selection_to_cvat_xml(selection, frame_names(selection["images"]), shapes)
    return export


def test_frame_names():
    assert frame_name("sub/c.png") == "c.png" and frame_name("sub/c.png", "path") == "sub/c.png"
    assert frame_name("sub\\c.png") == "c.png"
    images = [{"file_name": "x/a.png"}, {"file_name": "y/a.png"}]
    with pytest.raises(InputError, match="both become CVAT frame 'a.png'"):
        frame_names(images)
    assert frame_names(images, "path") == ["x/a.png", "y/a.png"]


@pytest.mark.parametrize("rows, expected", [
    ([[0, 0, 0], [0, 1, 1], [0, 1, 0]], ([0, 3, 1], 1, 1, 2, 2)),  # box starts on a set pixel: leading 0
    ([[1, 0], [0, 1]], ([0, 1, 2, 1], 0, 0, 2, 2)),
    ([[0, 1], [1, 0]], ([1, 2, 1], 0, 0, 2, 2)),
    ([[0, 0], [0, 1]], ([0, 1], 1, 1, 1, 1)),
])
def test_mask_to_cvat_rle(rows, expected):
    mask = np.array(rows, bool)
    assert mask_to_cvat_rle(mask) == expected
    runs, left, top, width, height = expected
    assert np.array_equal(cvat_rle_to_mask(runs, left, top, width, height, mask.shape[1], mask.shape[0]), mask)


def test_cvat_rle_round_trip_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random((13, 17)) < rng.uniform(0.05, 0.9)
        if mask.any():
            assert np.array_equal(cvat_rle_to_mask(*mask_to_cvat_rle(mask), 17, 13), mask)
    with pytest.raises(ValueError, match="cover 5 pixels"):
        cvat_rle_to_mask([2, 3], 0, 0, 2, 2, 4, 4)
    with pytest.raises(ValueError, match="leaves the 4x4 image"):
        cvat_rle_to_mask([0, 4], 3, 3, 2, 2, 4, 4)


def test_xml_export_structure(export_xml, hand_scores):
    selection, xml = export_xml()
    root = ET.fromstring(xml)
    assert root.findtext("version") == "1.1"
    labels = root.findall("meta/task/labels/label")
    assert [lab.findtext("name") for lab in labels] == ["cat", "dog"]
    for label in labels:  # score declared as a text attribute, else CVAT drops it
        attribute = label.find("attributes/attribute")
        assert (attribute.findtext("name"), attribute.findtext("input_type")) == ("score", "text")
    assert root.findtext("meta/task/size") == "3"
    images = root.findall("image")
    assert [(im.get("id"), im.get("name"), im.get("width"), im.get("height")) for im in images] == [
        ("0", "b.png", "50", "40"), ("1", "a.png", "40", "30"), ("2", "c.png", "32", "32")]
    box, mask = images[0]
    assert box.tag == "box" and box.get("label") == "dog"
    assert [box.get(k) for k in ("xtl", "ytl", "xbr", "ybr")] == ["0.00", "0.00", "50.00", "40.00"]
    assert box.find("attribute").attrib == {"name": "score"} and box.findtext("attribute") == "0.6000"
    assert mask.tag == "mask" and mask.get("label") == "cat" and mask.findtext("attribute") == "0.7500"
    assert [mask.get(k) for k in ("left", "top", "width", "height")] == ["10", "5", "20", "10"]
    runs = [int(r) for r in mask.get("rle").split(", ")]
    # row-major over the 20x10 box: 5 full rows + the next row's first 10 pixels set, then 10/10 alternating
    assert runs == [0, 110] + [10] * 9
    assert np.array_equal(cvat_rle_to_mask(runs, 10, 5, 20, 10, 50, 40), hand_scores.mask_b())
    a_box = images[1].find("box")
    assert [a_box.get(k) for k in ("xtl", "ytl", "xbr", "ybr")] == ["2.50", "3.25", "12.50", "11.25"]


def test_xml_export_polygons_and_boxes(export_xml):
    _, xml = export_xml("polygon", 1)
    polygon = ET.fromstring(xml).find("image/polygon")
    assert polygon.get("points") == ";".join(f"{x}.00,{y}.00" for x, y in POLYGON_B)
    _, xml = export_xml("box", 1)
    boxes = ET.fromstring(xml).findall("image/box")
    assert [b.get("xtl") for b in boxes] == ["0.00", "10.00"] and boxes[1].get("xbr") == "30.00"
    with pytest.raises(ValueError, match="unknown shape kind"):
        export_xml("ellipse")


def test_xml_round_trip_gives_the_same_boxes_and_masks(export_xml, hand_scores):
    selection, xml = export_xml()
    labels, report = cvat_xml_to_coco(xml, selection, finished="all")
    assert report.skipped == [] and report.n_annotations == 4
    assert [im["id"] for im in labels["images"]] == [11, 10, 12] and "rank" not in labels["images"][0]
    originals = {a["id"]: a for a in selection["annotations"]}
    for back, original_id in zip(labels["annotations"], [2, 3, 1, 4]):
        original = originals[original_id]
        assert back["category_id"] == original["category_id"]
        assert back["bbox"] == pytest.approx(original["bbox"], abs=0.01)
        if "segmentation" in original:
            assert np.array_equal(segmentation_to_mask(back["segmentation"], 40, 50), hand_scores.mask_b())
            assert back["area"] == hand_scores.mask_b().sum()


def test_xml_polygon_round_trip(export_xml):
    selection, xml = export_xml("polygon", 1)
    labels, _ = cvat_xml_to_coco(xml, selection, finished="all")
    polygon = labels["annotations"][1]
    assert polygon["segmentation"] == [[float(v) for p in POLYGON_B for v in p]]
    assert polygon["bbox"] == [10.0, 5.0, 19.0, 9.0]


def test_xml_import_skips_frames_without_shapes_and_reads_edits(export_xml):
    selection, xml = export_xml()
    root = ET.fromstring(xml)
    frames = root.findall("image")
    for shape in list(frames[2]):
        frames[2].remove(shape)
    box = frames[1].find("box")
    box.set("xtl", "5.00")
    ET.SubElement(frames[1], "box", label="dog", xtl="1", ytl="2", xbr="3", ybr="4", rotation="90")
    ET.SubElement(frames[1], "points", label="dog", points="1,1")
    ET.SubElement(frames[1], "tag", label="dog")
    labels, report = cvat_xml_to_coco(ET.tostring(root), selection)
    assert [(s["image_id"], s["frame"], s["reason"]) for s in report.skipped] == [
        (11, "b.png", "untouched pre-annotations"), (12, "c.png", "no shapes")]
    assert report.ignored_regions == {"points": 1, "tag": 1}
    a = [ann for ann in labels["annotations"] if ann["image_id"] == 10]
    assert a[0]["bbox"] == pytest.approx([5.0, 3.25, 7.5, 8.0])
    assert a[1]["bbox"] == pytest.approx([1.0, 2.0, 2.0, 2.0])  # a square turned 90 degrees is itself
    labels, _ = cvat_xml_to_coco(ET.tostring(root), selection, keep_empty=True, finished=["b.png"])
    assert [im["id"] for im in labels["images"]] == [11, 10, 12]


@pytest.mark.parametrize("edit, message", [
    (lambda root: root.find("image/box").set("label", "cow"), "label 'cow' is not one of the categories"),
    (lambda root: root.find("image").set("width", "51"), "is 51x40 in CVAT but 50x40 in the selection"),
    (lambda root: root.find("image").set("name", "zzz.png"), "frame 'zzz.png' is not an image of the selection"),
    (lambda root: root.append(ET.Element("track")), "CVAT for video"),
    (lambda root: root.find("image/mask").set("width", "3"), "bad <mask>"),
])
def test_xml_import_errors(export_xml, edit, message):
    selection, xml = export_xml()
    root = ET.fromstring(xml)
    edit(root)
    with pytest.raises(InputError, match=message):
        cvat_xml_to_coco(ET.tostring(root), selection)
    with pytest.raises(InputError, match="not valid XML"):
        cvat_xml_to_coco("<annotations>", selection)


def test_coco_export_for_cvat(hand_scores):
    selection = hand_scores.select(3)
    coco = selection_to_cvat_coco(selection, frame_names(selection["images"]))
    assert [(im["id"], im["file_name"]) for im in coco["images"]] == [(1, "b.png"), (2, "a.png"), (3, "c.png")]
    assert [c["id"] for c in coco["categories"]] == [3, 7]
    assert coco["annotations"][0]["attributes"] == {"occluded": False, "score": "0.6000"}
    assert coco["annotations"][1]["segmentation"] == selection["annotations"][1]["segmentation"]
    assert [a["iscrowd"] for a in coco["annotations"]] == [0, 1, 0, 0]  # masks as CVAT exports them
    assert coco["annotations"][0]["segmentation"] == []
    selection["categories"] = [{"id": 0, "name": "cat"}, {"id": 7, "name": "dog"}]
    for ann in selection["annotations"]:
        ann["category_id"] = {3: 0, 7: 7}[ann["category_id"]]
    coco = selection_to_cvat_coco(selection, frame_names(selection["images"]))
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "cat"), (2, "dog")]  # id 0 loses its label
    assert [a["category_id"] for a in coco["annotations"]] == [2, 1, 1, 2]


def test_coco_round_trip_and_cvat_style_export(hand_scores):
    selection = hand_scores.select(3)
    coco = selection_to_cvat_coco(selection, frame_names(selection["images"]))
    labels, report = cvat_coco_to_coco(coco, selection, finished="all")
    assert report.n_annotations == 4 and [im["id"] for im in labels["images"]] == [11, 10, 12]
    assert np.array_equal(segmentation_to_mask(labels["annotations"][1]["segmentation"], 40, 50), hand_scores.mask_b())
    # what CVAT's COCO 1.0 export looks like: categories renumbered, masks as uncompressed RLE
    runs = [int(v) for v in np.diff(np.flatnonzero(np.diff(np.r_[-1, hand_scores.mask_b().T.ravel(), -1]))).tolist()]
    cvat_style = {
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}],
        "images": [{"id": 1, "file_name": "b.png", "width": 50, "height": 40},
                   {"id": 2, "file_name": "a.png", "width": 40, "height": 30}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 2, "iscrowd": 1, "bbox": [10, 5, 20, 10],
             "segmentation": {"size": [40, 50], "counts": runs}},
            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [1, 2, 3, 4],
             "segmentation": [[1, 2, 4, 2, 4, 6, 1, 6], [10, 10, 12, 10, 11, 12]]},
        ],
    }
    labels, report = cvat_coco_to_coco(cvat_style, selection)
    assert [(s["image_id"], s["reason"]) for s in report.skipped] == [(10, "no shapes")]
    mask_ann, polygon_ann = labels["annotations"]
    assert mask_ann["category_id"] == 3 and polygon_ann["category_id"] == 7
    assert np.array_equal(segmentation_to_mask(mask_ann["segmentation"], 40, 50), hand_scores.mask_b())
    assert mask_ann["bbox"] == [10.0, 5.0, 20.0, 10.0]
    assert polygon_ann["bbox"] == [1.0, 2.0, 11.0, 10.0] and len(polygon_ann["segmentation"]) == 2
    cvat_style["categories"][0]["name"] = "cow"
    with pytest.raises(InputError, match="category 'cow'"):
        cvat_coco_to_coco(cvat_style, selection)


def test_export_and_import_commands(hand_scores, tmp_path, capsys):
    paths = hand_scores.write(tmp_path)
    sel = tmp_path / "sel"
    assert main(["select", "--ranking", str(paths["ranking"]), "--budget", "3", "--out", str(sel)]) == 0
    out = tmp_path / "cvat"
    assert main(["export", "cvat", "--selection", str(sel / "selection.json"), "--out", str(out),
                 "--image-root", str(paths["images"])]) == 0
    assert (out / "images.txt").read_text().splitlines() == [
        str(paths["images"] / name) for name in ("b.png", "a.png", "sub/c.png")]
    spec = json.loads((out / "cvat_labels.json").read_text())
    assert [label["name"] for label in spec] == ["cat", "dog"]
    assert spec[0]["attributes"][0] == {"name": "score", "mutable": False, "input_type": "text",
                                        "default_value": "", "values": [""]}
    coco_path = out / "coco" / "annotations" / "instances_default.json"
    assert json.loads(coco_path.read_text())["images"][2]["file_name"] == "c.png"
    with zipfile.ZipFile(out / "coco.zip") as archive:
        assert json.loads(archive.read("annotations/instances_default.json")) == json.loads(coco_path.read_text())
    for export in ("annotations.xml", "coco/annotations/instances_default.json"):
        capsys.readouterr()
        assert main(["import", "cvat", str(out / export), "--selection", str(sel / "selection.json"),
                     "--out", str(tmp_path / export)]) == 0
        printed = capsys.readouterr().out
        assert "imported 0 annotations on 0 of 3 images; skipped 3 untouched pre-annotations" in printed
        assert "note: 3 frame(s) hold only the model's pre-annotations" in printed
        assert main(["import", "cvat", str(out / export), "--selection", str(sel / "selection.json"),
                     "--out", str(tmp_path / export), "--all-finished"]) == 0
        assert "imported 4 annotations on 3 of 3 images" in capsys.readouterr().out
        labels = json.loads((tmp_path / export / "labels.json").read_text())
        assert [a["category_id"] for a in labels["annotations"]] == [7, 3, 3, 7]
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as archive:  # what CVAT downloads
        archive.write(out / "annotations.xml", "annotations.xml")
    (tmp_path / "done.txt").write_text("# frames finished\nb.png\n\na.png\nc.png\n")
    assert main(["import", "cvat", str(tmp_path / "export.zip"), "--selection", str(sel / "selection.json"),
                 "--out", str(tmp_path / "zip"), "--finished", str(tmp_path / "done.txt")]) == 0
    assert json.loads((tmp_path / "zip" / "labels.json").read_text()) == labels
    (tmp_path / "typo.txt").write_text("b.png\nzz.png\n")
    assert main(["import", "cvat", str(tmp_path / "export.zip"), "--selection", str(sel / "selection.json"),
                 "--out", str(tmp_path / "typo"), "--finished", str(tmp_path / "typo.txt")]) == 2
    assert "finished frame 'zz.png' is not an image of the selection" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()
    assert main(["import", "cvat", str(out / "coco.zip"), "--selection", str(sel / "selection.json"),
                 "--out", str(tmp_path / "zip")]) == 0
    with zipfile.ZipFile(tmp_path / "export.zip", "a") as archive:
        archive.write(out / "cvat_labels.json", "labels.json")
    assert main(["import", "cvat", str(tmp_path / "export.zip"), "--selection", str(sel / "selection.json"),
                 "--out", str(tmp_path / "zip")]) == 2
    assert "expected one annotations .xml or one COCO .json in the zip" in capsys.readouterr().err
    assert main(["export", "cvat", "--selection", str(sel / "selection.json"), "--out", str(out),
                 "--frame-names", "path", "--shapes", "polygon"]) == 0
    assert ET.parse(out / "annotations.xml").getroot().findall("image")[2].get("name") == "sub/c.png"
    assert main(["import", "cvat", str(out / "annotations.xml"), "--selection", str(sel / "selection.json"),
                 "--frame-names", "path", "--out", str(tmp_path / "p"), "--all-finished"]) == 0
    assert hand_scores.categories[0]["name"] == "cat"


def test_untouched_frames_are_never_imported_as_labels(export_xml):
    """A frame holding exactly the uploaded pre-annotations is nobody's work: left out unless named
    finished. A moved, relabelled, added or deleted shape, or a person's ``source``, makes it a label."""
    selection, xml = export_xml()  # b.png: dog box + cat mask; a.png: cat box; c.png: dog box
    labels, report = cvat_xml_to_coco(xml, selection)
    assert labels["images"] == [] and report.n_items == 3
    assert [s["reason"] for s in report.skipped] == ["untouched pre-annotations"] * 3
    assert report.notes[0].startswith("3 frame(s) hold only the model's pre-annotations")

    def imported(edit, **kw):
        root = ET.fromstring(xml)
        edit(root.findall("image"))
        return [im["file_name"] for im in cvat_xml_to_coco(ET.tostring(root), selection, **kw)[0]["images"]]

    assert imported(lambda f: f[1].find("box").set("xtl", "4.10")) == ["a.png"]   # 1.60 px: a person's edit
    assert imported(lambda f: f[1].find("box").set("xtl", "3.90")) == []          # 1.40 px: unchanged
    assert imported(lambda f: f[1].find("box").set("label", "dog")) == ["a.png"]  # relabelled, box kept
    assert imported(lambda f: f[0].remove(f[0].find("box"))) == ["b.png"]        # a false positive deleted
    assert imported(lambda f: ET.SubElement(f[2], "box", label="cat", xtl="1", ytl="1", xbr="5", ybr="5")) == ["sub/c.png"]
    assert imported(lambda f: f[2].find("box").set("source", "manual")) == ["sub/c.png"]
    assert imported(lambda f: f[2].find("box").set("source", "file")) == []
    assert imported(lambda f: None, finished=["a.png", "c.png"]) == ["a.png", "sub/c.png"]
    with pytest.raises(InputError, match="finished frame 'nope.png' is not an image of the selection"):
        imported(lambda f: None, finished=["nope.png"])


def test_untouched_polygons_and_coco_masks_are_recognised(export_xml, hand_scores):
    # a traced polygon's box is 1 px smaller than its mask's: still the pre-annotation
    selection, xml = export_xml("polygon", 1)
    assert cvat_xml_to_coco(xml, selection)[0]["images"] == []
    selection = hand_scores.select(3)
    coco = selection_to_cvat_coco(selection, frame_names(selection["images"]))
    assert cvat_coco_to_coco(coco, selection)[1].n_images == 0
    coco["annotations"][0]["bbox"][0] += 2.0  # the dog box on b.png moved by 2 px
    labels, report = cvat_coco_to_coco(coco, selection)
    assert [im["file_name"] for im in labels["images"]] == ["b.png"]
    assert [s["frame"] for s in report.skipped] == ["a.png", "c.png"]


@pytest.mark.parametrize("annotations, pre, expected", [
    ([], [], False),
    ([{"category_id": 1, "bbox": [0, 0, 10, 10]}], [], False),
    ([], [(1, [[0, 0, 10, 10]])], False),
    ([{"category_id": 1, "bbox": [1.5, 0, 10, 10]}], [(1, [[0, 0, 10, 10]])], True),    # corners 1.5 px off
    ([{"category_id": 1, "bbox": [0, 0, 11.6, 10]}], [(1, [[0, 0, 10, 10]])], False),   # x2 1.6 px off
    ([{"category_id": 1, "bbox": [0, 0, 9, 9]}], [(1, [[0, 0, 10, 10], [0, 0, 9, 9]])], True),  # the mask's box
    # two boxes swapped in order still pair one to one
    ([{"category_id": 2, "bbox": [20, 20, 5, 5]}, {"category_id": 1, "bbox": [0, 0, 10, 10]}],
     [(1, [[0, 0, 10, 10]]), (2, [[20, 20, 25, 25]])], True),
    # two same-label boxes: one pre-annotation each, so a duplicate of one is a change
    ([{"category_id": 1, "bbox": [0, 0, 10, 10]}, {"category_id": 1, "bbox": [0, 0, 10, 10]}],
     [(1, [[0, 0, 10, 10]]), (1, [[30, 30, 40, 40]])], False),
])
def test_unchanged(annotations, pre, expected):
    from det_al.annotation.cvat_import import unchanged
    assert unchanged(annotations, pre) is expected
