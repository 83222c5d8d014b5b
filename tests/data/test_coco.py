import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from det_al.data.coco import (
    categories_by_name,
    category_ids_to_labels,
    list_images,
    load_coco,
    load_results,
    pool_from_folder,
    quiet_coco,
    validate_coco,
    write_coco,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from det_al.errors import InputError
from det_al.data.segmentation import mask_to_rle

CATEGORIES = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]


def _dataset() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 10, "height": 8},
            {"id": 5, "file_name": "b.png", "width": 10, "height": 8},
        ],
        "categories": copy.deepcopy(CATEGORIES),
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},
        ],
    }


def test_load_valid_file(tmp_path):
    write_coco(tmp_path / "c.json", _dataset())
    assert load_coco(tmp_path / "c.json", require_annotations=True) == _dataset()


def _break(edit):
    d = _dataset()
    edit(d)
    return d


BAD = [
    ("list", lambda d: None, "expected a JSON object, got a list"),
    ("no images", lambda d: d.pop("images"), "missing key 'images'"),
    ("no categories", lambda d: d.pop("categories"), "missing key 'categories'"),
    ("images not list", lambda d: d.update(images={}), "'images' must be a list"),
    ("image no id", lambda d: d["images"][1].pop("id"), r"images\[1\]: missing 'id'"),
    ("image no file", lambda d: d["images"][1].pop("file_name"), r"images\[1\] \(id 5\): missing 'file_name'"),
    ("image str id", lambda d: d["images"][0].update(id="1"), "'id' must be an integer"),
    ("bad width", lambda d: d["images"][0].update(width=0), "'width' must be a positive integer"),
    ("dup image", lambda d: d["images"][1].update(id=1), r"duplicate image id 1 \(images\[0\] and images\[1\]\)"),
    ("dup category", lambda d: d["categories"][1].update(id=7), "duplicate category id 7"),
    ("dup category name", lambda d: d["categories"][1].update(name="cat"), "duplicate category name 'cat'"),
    ("dup annotation", lambda d: d["annotations"][1].update(id=1), "duplicate annotation id 1"),
    ("unknown image", lambda d: d["annotations"][1].update(image_id=9), r"annotations\[1\] \(id 2\): unknown image id 9"),
    ("unknown category", lambda d: d["annotations"][0].update(category_id=1), "unknown category id 1"),
    ("bbox short", lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"bad bbox \[1, 2, 3\]: expected \[x, y, width, height\]"),
    ("bbox negative", lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), "negative width or height"),
    ("bbox string", lambda d: d["annotations"][0].update(bbox=[1, 2, "3", 4]), "must be numbers"),
    ("bbox missing", lambda d: d["annotations"][0].pop("bbox"), "bad bbox None: missing"),
]


@pytest.mark.parametrize("name,edit,message", BAD, ids=[b[0] for b in BAD])
def test_validation_errors_name_file_and_problem(tmp_path, name, edit, message):
    data = [] if name == "list" else _break(edit)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message) as info:
        load_coco(path)
    assert info.value.path == str(path)
    assert str(info.value).startswith(str(path) + ": ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name,edit,message", BAD, ids=[b[0] for b in BAD])
def test_streamed_pool_reader_gives_the_same_errors(tmp_path, name, edit, message):
    from det_al.data.pool import read_pool

    path = tmp_path / "bad.json"
    path.write_text(json.dumps([] if name == "list" else _break(edit), indent=1))
    with pytest.raises(InputError) as loaded:
        load_coco(path)
    for chunk in (8, 1 << 20):
        with pytest.raises(InputError) as streamed:
            read_pool(path, chunk=chunk)
        assert str(streamed.value) == str(loaded.value)


def test_bbox_nan_is_refused():
    d = _dataset()
    d["annotations"][0]["bbox"] = [1, 2, float("nan"), 4]
    with pytest.raises(InputError, match="finite"):
        validate_coco(d)


def test_not_json_and_missing(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_coco(tmp_path / "x.json")
    with pytest.raises(InputError, match="file not found"):
        load_coco(tmp_path / "missing.json")


def test_annotations_optional_unless_required(tmp_path):
    d = _dataset()
    d.pop("annotations")
    assert validate_coco(d) is d
    with pytest.raises(InputError, match="missing key 'annotations'"):
        validate_coco(d, "p.json", require_annotations=True)


def test_duplicate_file_names_only_warn(caplog):
    d = _dataset()
    d["images"][1]["file_name"] = "a.png"
    validate_coco(d)
    assert "appear more than once" in caplog.text


def test_quiet_coco_and_load_results(capsys):
    gt = quiet_coco(_dataset())
    assert sorted(gt.getImgIds()) == [1, 5]
    assert gt.getCatIds() == [7, 3]
    results = [{"image_id": 1, "category_id": 7, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.9}]
    dt = load_results(gt, results)
    assert dt.loadAnns(dt.getAnnIds())[0]["area"] == 12.0
    empty = load_results(gt, [])
    assert empty.getAnnIds() == [] and sorted(empty.getImgIds()) == [1, 5]
    assert capsys.readouterr().out == ""


def test_segmentation_results_round_trip_through_pycocotools():
    mask = np.zeros((8, 10), bool)
    mask[2:5, 3:7] = True
    rle = mask_to_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [8, 10]
    json.dumps(rle)
    gt = quiet_coco(_dataset())
    dt = load_results(gt, [{"image_id": 1, "category_id": 3, "segmentation": rle, "score": 0.5}])
    ann = dt.loadAnns(dt.getAnnIds())[0]
    assert ann["area"] == 12
    assert list(ann["bbox"]) == [3.0, 2.0, 4.0, 3.0]
    np.testing.assert_array_equal(dt.annToMask(ann).astype(bool), mask)


@pytest.mark.parametrize(
    "xyxy,xywh",
    [
        ([[1.0, 2.0, 4.0, 6.0]], [[1.0, 2.0, 3.0, 4.0]]),
        ([[0.0, 0.0, 0.0, 0.0], [10.5, 0.0, 11.0, 2.0]], [[0.0, 0.0, 0.0, 0.0], [10.5, 0.0, 0.5, 2.0]]),
        ([], []),
    ],
)
def test_box_conversions(xyxy, xywh):
    assert xyxy_to_xywh(torch.tensor(xyxy).reshape(-1, 4)) == xywh
    assert xyxy_to_xywh(np.array(xyxy).reshape(-1, 4)) == xywh
    back = xywh_to_xyxy(xywh)
    assert back.shape == (len(xyxy), 4) and back.dtype == torch.float32
    torch.testing.assert_close(back, torch.tensor(xyxy).reshape(-1, 4))


def test_box_shape_error():
    with pytest.raises(ValueError, match=r"shape \(N, 4\), got \(2, 3\)"):
        xyxy_to_xywh(torch.zeros(2, 3))


def test_categories_helpers():
    assert categories_by_name(CATEGORIES)["dog"]["id"] == 3
    assert category_ids_to_labels(CATEGORIES) == {7: 1, 3: 2}
    with pytest.raises(ValueError, match="duplicate"):
        categories_by_name(CATEGORIES + [{"id": 9, "name": "cat"}])


def test_pool_from_folder(tmp_path):
    root = tmp_path / "pool"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / "b.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / "sub" / "a.JPG", exif=exif.tobytes())
    (root / "c.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("ignored")
    (root / ".hidden.png").write_bytes(b"ignored")
    assert list_images(root) == ["b.png", "c.jpg", "sub/a.JPG"]

    pool = pool_from_folder(root)
    assert pool["images"] == [
        {"id": 1, "file_name": "b.png", "width": 6, "height": 4},
        {"id": 2, "file_name": "c.jpg"},  # unreadable: kept, so scoring lists it as skipped
        {"id": 3, "file_name": "sub/a.JPG", "width": 4, "height": 6},  # EXIF-rotated
    ]
    assert pool["categories"] == [] and pool["annotations"] == []
    assert pool_from_folder(root, sizes=False)["images"] == [
        {"id": 1, "file_name": "b.png"}, {"id": 2, "file_name": "c.jpg"}, {"id": 3, "file_name": "sub/a.JPG"},
    ]
    validate_coco(pool)
    write_coco(tmp_path / "pool.json", pool)
    assert load_coco(tmp_path / "pool.json")["images"] == pool["images"]


def test_pool_from_bad_folder(tmp_path):
    with pytest.raises(InputError, match="image folder not found"):
        pool_from_folder(tmp_path / "nope")
    with pytest.raises(InputError, match="no image files found"):
        pool_from_folder(tmp_path)
