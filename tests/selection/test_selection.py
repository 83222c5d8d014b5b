"""Selection: ranking + pseudo-labels -> selection.json. Also holds the tiny score-output fixture
(:func:`write_score_outputs`) that the Label Studio, CVAT and merge tests import."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from det_al.cli import main
from det_al.errors import InputError
from det_al.selection.files import read_ranking, select_batch

CATEGORIES = [{"id": 3, "name": "cat", "supercategory": ""}, {"id": 7, "name": "dog", "supercategory": ""}]
# id -> (file_name, width, height)
IMAGES = {10: ("a.png", 40, 30), 11: ("b.png", 50, 40), 12: ("sub/c.png", 32, 32)}


def mask_b() -> np.ndarray:
    """The mask of annotation 3 on image b (50x40): an L shape, rows 5..14, columns 10..29."""
    mask = np.zeros((40, 50), bool)
    mask[5:15, 10:30] = True
    mask[10:15, 20:30] = False  # the notch: rows 10..14, columns 20..29 removed
    return mask


def encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def pseudo_labels() -> dict:
    images = [{"id": i, "file_name": f, "width": w, "height": h} for i, (f, w, h) in IMAGES.items()]
    extra = {"uncertainty": 0.3, "entropy": 0.2, "presence": 0.9}
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 3, "bbox": [2.5, 3.25, 10.0, 8.0], "area": 80.0, "iscrowd": 0,
         "score": 0.9, **extra},
        {"id": 2, "image_id": 11, "category_id": 7, "bbox": [0.0, 0.0, 50.0, 40.0], "area": 2000.0, "iscrowd": 0,
         "score": 0.6, **extra},
        {"id": 3, "image_id": 11, "category_id": 3, "bbox": [10.0, 5.0, 20.0, 10.0], "area": 150.0, "iscrowd": 0,
         "score": 0.75, "segmentation": encode(mask_b()), **extra},
        {"id": 4, "image_id": 12, "category_id": 7, "bbox": [30.0, 0.0, 2.0, 2.0], "area": 4.0, "iscrowd": 0,
         "score": 0.5, **extra},
    ]
    return {"images": images, "categories": CATEGORIES, "annotations": annotations}


RANKING = [
    {"image_id": 11, "file_name": "b.png", "rank": 1, "informativeness": 0.9, "class": 0.5, "box": 0.4,
     "mask": 0.3, "presence": 0.2, "n_objects": 2, "certain": False, "empty": False},
    {"image_id": 10, "file_name": "a.png", "rank": 2, "informativeness": 0.5, "class": 0.3, "box": 0.2,
     "mask": 0.0, "presence": 0.1, "n_objects": 1, "certain": False, "empty": False},
    {"image_id": 12, "file_name": "sub/c.png", "rank": 3, "informativeness": 0.2, "class": 0.1, "box": 0.1,
     "mask": 0.0, "presence": 0.0, "n_objects": 1, "certain": True, "empty": False},
]


def write_score_outputs(root: Path) -> dict[str, Path]:
    """A pool of three small PNGs under ``root/images`` and a ``det-al score`` output folder.

    Returns paths: images (the image root), score (folder), ranking, pseudo_labels, pool.
    """
    images = root / "images"
    rng = np.random.default_rng(0)
    for file_name, width, height in IMAGES.values():
        (images / file_name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(images / file_name), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    score = root / "score"
    score.mkdir(parents=True, exist_ok=True)
    (score / "ranking.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RANKING))
    (score / "pseudo_labels.json").write_text(json.dumps(pseudo_labels()))
    pool = {"images": pseudo_labels()["images"], "categories": CATEGORIES, "annotations": []}
    (root / "pool.json").write_text(json.dumps(pool))
    return {"images": images, "score": score, "ranking": score / "ranking.jsonl",
            "pseudo_labels": score / "pseudo_labels.json", "pool": root / "pool.json"}


def make_selection(budget: int = 3) -> dict:
    return select_batch(RANKING, pseudo_labels(), budget)


# --------------------------------------------------------------------------- tests


def test_top_takes_the_most_informative_whatever_the_order():
    shuffled = [RANKING[2], RANKING[0], RANKING[1]]
    assert [im["id"] for im in select_batch(shuffled, pseudo_labels(), 2)["images"]] == [11, 10]
    assert [im["id"] for im in select_batch(shuffled, pseudo_labels(), 10)["images"]] == [11, 10, 12]
    # a box budget of 2: image 11 (2 objects) fills it
    assert [im["id"] for im in select_batch(shuffled, pseudo_labels(), budget_boxes=2)["images"]] == [11]


def test_one_strategy_registry():
    import det_al.selection.files
    from det_al.selection import strategies

    assert not hasattr(det_al.selection.files, "STRATEGIES")  # the registry lives in det_al.selection.strategies only
    by_class = select_batch(RANKING, pseudo_labels(), 1, "top:class")
    assert [im["id"] for im in by_class["images"]] == [11]
    assert select_batch(RANKING, pseudo_labels(), 1, strategies.random, seed=0)["images"][0]["id"] in IMAGES
    with pytest.raises(InputError, match="unknown strategy 'nope'"):
        select_batch(RANKING, pseudo_labels(), 1, "nope")


def test_selection_is_coco_in_rank_order_with_pseudo_labels():
    selection = make_selection(2)
    assert [im["id"] for im in selection["images"]] == [11, 10]
    assert selection["images"][0] == {"id": 11, "file_name": "b.png", "width": 50, "height": 40,
                                       "rank": 1, "informativeness": 0.9}
    assert [a["id"] for a in selection["annotations"]] == [2, 3, 1]  # image b's first, then a's
    assert selection["annotations"][1]["segmentation"] == pseudo_labels()["annotations"][2]["segmentation"]
    assert selection["annotations"][0]["score"] == 0.6
    assert selection["categories"] == CATEGORIES


def test_strategy_order_does_not_change_rank_order():
    reverse = lambda ranking, budget, budget_boxes, **_: sorted(ranking, key=lambda r: -r["rank"])[:budget]  # noqa: E731
    selection = select_batch(RANKING, pseudo_labels(), 2, reverse)
    assert [im["rank"] for im in selection["images"]] == [2, 3]


def test_selection_refuses_unknown_or_mismatched_images():
    with pytest.raises(InputError, match="image_id 99"):
        select_batch([{"image_id": 99, "rank": 1, "informativeness": 0.1}], pseudo_labels(), 1)
    with pytest.raises(InputError, match="file_name"):
        select_batch([{"image_id": 10, "file_name": "other.png", "rank": 1, "informativeness": 0.1}], pseudo_labels(), 1)


@pytest.mark.parametrize("lines, message", [
    (['{"image_id": 1, "rank": 1}'], "missing key 'informativeness'"),
    (['{"image_id": 1, "rank": 1, "informativeness": 0.1}', '{"image_id": 1, "rank": 2, "informativeness": 0.1}'],
     "appears twice"),
    (['not json'], "line 1: not valid JSON"),
    (['{"image_id": 1, "rank": 1, "informativeness": NaN}'], "finite"),
])
def test_read_ranking_errors(tmp_path, lines, message):
    path = tmp_path / "ranking.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=message):
        read_ranking(path)


def test_select_command_writes_selection(tmp_path, capsys):
    paths = write_score_outputs(tmp_path)
    assert main(["select", "--ranking", str(paths["ranking"]), "--budget", "2", "--out", str(tmp_path / "sel")]) == 0
    selection = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert selection == json.loads(json.dumps(make_selection(2)))
    assert "selected 2 of 3 images (3 pseudo-labels)" in capsys.readouterr().out


def test_select_command_errors_are_one_line(tmp_path, capsys):
    paths = write_score_outputs(tmp_path)
    assert main(["select", "--ranking", str(paths["ranking"]), "--budget", "0", "--out", str(tmp_path)]) == 2
    assert "--budget must be at least 1" in capsys.readouterr().err
    paths["pseudo_labels"].unlink()
    assert main(["select", "--ranking", str(paths["ranking"]), "--budget", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pseudo_labels.json: file not found" in err and len(err.strip().splitlines()) == 1
