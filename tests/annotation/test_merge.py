"""Merging imported labels into a training set and out of the pool."""

from __future__ import annotations

import copy
import json

import pytest

from det_al.cli import main
from det_al.errors import InputError
from det_al.annotation.merge import labels_coco, merge_labels


def train_set() -> dict:
    return {
        "info": {"description": "mine"},
        "images": [{"id": 1, "file_name": "t1.png", "width": 10, "height": 10},
                   {"id": 2, "file_name": "t2.png", "width": 10, "height": 10}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0},
                        {"id": 9, "image_id": 2, "category_id": 2, "bbox": [1, 1, 2, 2], "area": 4, "iscrowd": 0}],
    }


def pool_set() -> dict:
    return {"images": [{"id": 2, "file_name": "p2.png", "width": 20, "height": 10},
                       {"id": 5, "file_name": "p5.png", "width": 20, "height": 10},
                       {"id": 6, "file_name": "p6.png", "width": 30, "height": 10}],
            "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
            "annotations": [{"id": 1, "image_id": 5, "category_id": 3, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0}]}


def labels_set() -> dict:
    """Labels for pool images 2 and 5 with the pool's category ids (cat 3, dog 7)."""
    images = [{"id": 2, "file_name": "p2.png", "width": 20, "height": 10, "rank": 1, "informativeness": 0.5},
              {"id": 5, "file_name": "p5.png", "width": 20, "height": 10, "rank": 2, "informativeness": 0.4}]
    return labels_coco(images, [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}], [
        [{"category_id": 7, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0}],
        [{"category_id": 3, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},
         {"category_id": 7, "bbox": [5, 5, 1, 1], "area": 1, "iscrowd": 0}],
    ])


def test_labels_coco_numbers_annotations_and_drops_selection_fields():
    labels = labels_set()
    assert [a["id"] for a in labels["annotations"]] == [1, 2, 3]
    assert [a["image_id"] for a in labels["annotations"]] == [2, 5, 5]
    assert labels["images"][0] == {"id": 2, "file_name": "p2.png", "width": 20, "height": 10}


def test_merge_adds_labelled_images_and_removes_them_from_the_pool():
    train, labels, pool = train_set(), labels_set(), pool_set()
    before = copy.deepcopy((train, labels, pool))
    result = merge_labels(train, labels, pool)
    assert (train, labels, pool) == before  # inputs untouched
    assert [(im["id"], im["file_name"]) for im in result.train["images"]] == [
        (1, "t1.png"), (2, "t2.png"), (7, "p2.png"), (5, "p5.png")]  # id 2 was taken: max id 6, so 7
    assert result.renumbered_images == {2: 7}
    added = result.train["annotations"][2:]
    assert [a["id"] for a in added] == [10, 11, 12]  # after the largest id, 9
    assert [(a["image_id"], a["category_id"]) for a in added] == [(7, 1), (5, 2), (5, 1)]  # dog 7->1, cat 3->2
    assert result.train["categories"] == train["categories"] and result.train["info"] == train["info"]
    assert [im["id"] for im in result.pool["images"]] == [6]
    assert result.pool["annotations"] == []
    assert (result.n_added_images, result.n_added_annotations, result.n_removed_from_pool) == (2, 3, 2)
    names = [im["file_name"] for im in result.train["images"] + result.pool["images"]]
    assert sorted(names) == sorted({*names})  # nothing duplicated
    assert sorted(names) == sorted([im["file_name"] for im in train["images"] + pool["images"]])  # nothing lost


def test_merge_without_pool_and_labels_not_in_pool():
    result = merge_labels(train_set(), labels_set(), None)
    assert len(result.train["images"]) == 4 and result.pool["images"] == []
    pool = pool_set()
    pool["images"] = pool["images"][2:]
    assert merge_labels(train_set(), labels_set(), pool).not_in_pool == ["p2.png", "p5.png"]


@pytest.mark.parametrize("change, message", [
    (lambda t, l, p: l["categories"].append({"id": 8, "name": "cow"}), "category 'cow' \\(id 8\\) is not a category"),
    (lambda t, l, p: t["images"].append({"id": 3, "file_name": "p5.png", "width": 20, "height": 10}),
     "'p5.png' is already in the training set"),
    (lambda t, l, p: p["images"][1].update(width=21), "'p5.png' is 20x10 here but 21x10 in the pool"),
    (lambda t, l, p: l["images"].append(dict(l["images"][0], id=99)), "'p2.png' appears twice"),
    (lambda t, l, p: l["annotations"][0].update(category_id=4), "unknown category_id 4"),
    (lambda t, l, p: t["categories"].append({"id": 5, "name": "dog"}), "'dog' is used by ids 1 and 5"),
])
def test_merge_conflicts_are_errors(change, message):
    train, labels, pool = train_set(), labels_set(), pool_set()
    change(train, labels, pool)
    with pytest.raises(InputError, match=message):
        merge_labels(train, labels, pool)


def test_merge_command(tmp_path, capsys):
    for name, data in (("train", train_set()), ("labels", labels_set()), ("pool", pool_set())):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    args = ["merge", "--train", str(tmp_path / "train.json"), "--labels", str(tmp_path / "labels.json"),
            "--pool", str(tmp_path / "pool.json")]
    assert main(args + ["--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "train: +2 images, +3 annotations -> 4 images" in out and "pool: -2 images -> 1 images" in out
    expected = merge_labels(train_set(), labels_set(), pool_set())
    assert json.loads((tmp_path / "out" / "train.json").read_text()) == expected.train
    assert json.loads((tmp_path / "out" / "pool.json").read_text()) == expected.pool
    assert json.loads((tmp_path / "train.json").read_text()) == train_set()
    assert main(args + ["--out", str(tmp_path)]) == 2
    assert "would overwrite an input" in capsys.readouterr().err
    labels = labels_set()
    labels["categories"][0]["name"] = "lion"
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    assert main(args + ["--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "labels.json: category 'lion' (id 3) is not a category of the training set (cat, dog)" in err
    assert not (tmp_path / "out2" / "train.json").exists()


def test_a_folder_pool_written_by_score_merges(tmp_path):
    """``det-al score --pool FOLDER`` writes a pool.json without sizes; merge must accept what det_al
    writes (issue 26: it refused 'NonexNone in the pool')."""
    from PIL import Image

    from det_al.data.files import write_json
    from det_al.data.sources import load_pool

    folder = tmp_path / "images"
    folder.mkdir()
    for name, size in (("p2.png", (20, 10)), ("p5.png", (20, 10)), ("p6.png", (30, 10))):
        Image.new("RGB", size).save(folder / name)
    write_json(tmp_path / "pool.json", load_pool(folder).folder_coco, indent=1)  # what det-al score writes
    pool = json.loads((tmp_path / "pool.json").read_text())
    assert all("width" not in im or im["width"] is None for im in pool["images"])
    for name, data in (("train", train_set()), ("labels", labels_set())):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    assert main(["merge", "--train", str(tmp_path / "train.json"), "--labels", str(tmp_path / "labels.json"),
                 "--pool", str(tmp_path / "pool.json"), "--out", str(tmp_path / "out")]) == 0
    merged_pool = json.loads((tmp_path / "out" / "pool.json").read_text())
    assert [im["file_name"] for im in merged_pool["images"]] == ["p6.png"]
    merged_train = json.loads((tmp_path / "out" / "train.json").read_text())
    assert [(im["file_name"], im["width"], im["height"]) for im in merged_train["images"][2:]] == [
        ("p2.png", 20, 10), ("p5.png", 20, 10)]  # the sizes the labels carry
