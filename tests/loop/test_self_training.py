"""Self-training: which pool images become pseudo-labelled training data, and with what."""

from det_al.loop.data import LoopRun
from det_al.loop.self_training import pseudo_labelled


def det(image_id, score, category_id=1, bbox=(0, 0, 4, 5)):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score, "uncertainty": 0.3}


def test_confident_boxes_are_labels_uncertain_ones_ignore_regions():
    images = [{"id": i, "file_name": f"{i}.png"} for i in range(1, 7)]
    dets = [
        det(1, 0.9), det(1, 0.05),  # confident + below ignore (background): kept, one box
        det(2, 0.9), det(2, 0.5, bbox=(10, 10, 3, 3)),  # an uncertain box: an ignore region, not background
        det(3, 0.1),  # nothing confident: left out (maybe a blind spot)
        det(4, 0.7, 2), det(4, 0.8, 3),  # exactly at the threshold counts as confident: both boxes
        det(5, 0.2),  # exactly at ignore is uncertain... and nothing confident anyway: left out
        # image 6: no detection at all: left out
    ]
    out = pseudo_labelled(images, dets, threshold=0.7, ignore=0.2, categories=[{"id": 1, "name": "a"}])
    assert [im["id"] for im in out["images"]] == [1, 2, 4]
    assert [(a["image_id"], a["category_id"], a["iscrowd"]) for a in out["annotations"]] == [
        (1, 1, 0), (2, 1, 0), (2, 1, 1), (4, 2, 0), (4, 3, 0)
    ]
    # COCO fields only: no score, no uncertainty; the area from the box
    assert out["annotations"][0] == {"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 5], "area": 20.0, "iscrowd": 0}
    assert out["annotations"][2] == {
        "image_id": 2, "category_id": 1, "bbox": [10, 10, 3, 3], "area": 9.0, "iscrowd": 1, "ignore": 1
    }
    assert out["categories"] == [{"id": 1, "name": "a"}]


def test_a_detection_without_category_is_never_an_annotation():
    # category -1 (a label the model has no category for) cannot be a label or an ignore region:
    # at or above ignore it leaves the image out, below it it is background like any other
    images = [{"id": 1}, {"id": 2}]
    dets = [det(1, 0.9), det(1, 0.3, -1), det(2, 0.9), det(2, 0.1, -1)]
    out = pseudo_labelled(images, dets, threshold=0.7, ignore=0.2)
    assert [im["id"] for im in out["images"]] == [2]
    assert [(a["image_id"], a["category_id"]) for a in out["annotations"]] == [(2, 1)]


def test_ignore_equal_to_threshold_has_no_ignore_regions():
    images = [{"id": 1}, {"id": 2}]
    out = pseudo_labelled(images, [det(1, 0.9), det(1, 0.6), det(2, 0.3)], threshold=0.7, ignore=0.7)
    assert [im["id"] for im in out["images"]] == [1]
    assert len(out["annotations"]) == 1  # the 0.6 box is treated as background


def test_training_erases_ignore_regions_and_gives_them_no_target(tmp_path):
    """An ignore annotation is painted with the image's mean colour before augmentation and is
    not a target; an ordinary crowd annotation is only skipped, as before."""
    import numpy as np
    from PIL import Image

    from det_al.data.datasets import CocoDetectionDataset

    pixels = np.zeros((8, 10, 3), np.uint8)
    pixels[:, 5:] = 200  # mean per channel: 100
    Image.fromarray(pixels).save(tmp_path / "a.png")
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 8}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [6, 2, 2.5, 3], "iscrowd": 1, "ignore": 1},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [2, 5, 2, 2], "iscrowd": 1},
        ],
    }
    coco["annotations"].append(  # an uncertain duplicate over the labelled box: it keeps its pixels
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [0, 0, 3, 1], "iscrowd": 1, "ignore": 1})
    coco["annotations"].append(  # "ignore" without iscrowd is an ordinary object (a user's own flag)
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 6, 2, 2], "iscrowd": 0, "ignore": 1})
    image, target = CocoDetectionDataset(coco, tmp_path, [{"id": 1, "name": "a"}])[0]
    got = (image * 255).round().to(int).permute(1, 2, 0).numpy()
    expected = pixels.astype(int)
    expected[2:5, 6:9] = 100  # x 6..8.5 -> columns 6, 7, 8; y 2..5 -> rows 2, 3, 4
    expected[0, 2] = 100  # of the duplicate [0, 3) x [0, 1) only column 2 lies outside the label [0, 2) x [0, 2)
    assert (got == expected).all()
    assert target["boxes"].tolist() == [[0.0, 0.0, 2.0, 2.0], [0.0, 6.0, 2.0, 8.0]]
    assert target["labels"].tolist() == [1, 1]


def test_a_run_trains_on_labelled_plus_pseudo_labels_with_fresh_ids(loop_data):
    run = LoopRun("top", 0, loop_data())
    run.pseudo = pseudo_labelled(run.pool()["images"], [det(2, 0.95, 5)], 0.7, 0.2)
    train = run.training_set()
    assert [im["id"] for im in train["images"]] == [1, 2]
    assert [(a["id"], a["image_id"]) for a in train["annotations"]] == [(9, 1), (10, 2)]
    assert [im["id"] for im in run.labelled()["images"]] == [1]  # the labelled set counts no pseudo-labels


def test_loop_self_training_trains_round_one_on_the_pseudo_labels(tmp_path):
    """A quick loop with a threshold every detection passes: round 1 trains on the labelled
    images, the revealed ones and the pseudo-labelled unselected pool images (kept beside it)."""
    import json

    from det_al.config import config_from_dict
    from det_al.loop.rounds import run_loop
    from det_al.loop.data import LoopData
    from det_al.loop.results import read_rows
    from det_al.data.synthetic import make_demo_data

    paths = make_demo_data(tmp_path / "data", seed=0, n_train=4, n_val=2, n_pool=6)
    data = LoopData.load(paths["train"], paths["pool"], paths["oracle"], paths["val"], paths["image_root"])
    config = config_from_dict(
        {
            "model": {"name": "fasterrcnn_tiny", "num_classes": 4},
            "train": {"epochs": 1, "batch_size": 4, "optimizer": "adamw", "lr": 0.002, "warmup_iters": 0, "eval_every": 0},
            "passes": {"passes": 2, "dropout": 0.3, "batch_size": 6},
            "loop": {
                "rounds": 1, "budget": 2, "strategies": ["top:oracle_error"], "retrain": "finetune",
                "self_training": True, "pseudo_threshold": 0.001, "pseudo_ignore": 0.0,
            },
        }
    )
    run_loop(config, data, tmp_path / "out", progress=False)
    folder = tmp_path / "out" / "runs" / "top-oracle_error" / "seed0" / "round1"
    pseudo = json.loads((folder / "pseudo_labels.json").read_text())
    trained = json.loads((folder / "labelled.json").read_text())
    rows = read_rows(tmp_path / "out" / "results.csv")
    selected = rows[0]["selected"]
    unselected = [im["id"] for im in data.pool["images"] if im["id"] not in selected]
    assert {im["id"] for im in pseudo["images"]} <= set(unselected) and pseudo["images"]
    assert [im["id"] for im in trained["images"]] == (
        [im["id"] for im in data.labelled["images"]]
        + [im["id"] for im in data.oracle["images"] if im["id"] in selected]
        + [im["id"] for im in pseudo["images"]]
    )
    assert len(trained["annotations"]) == len(data.labelled["annotations"]) + rows[0]["selected_boxes"] + len(pseudo["annotations"])
    assert rows[1]["labelled_images"] == 6  # pseudo-labelled images are not counted as labelled


def test_a_resume_reads_the_rounds_pseudo_labels_or_says_why_it_cannot(loop_data, tmp_path):
    import json

    import pytest

    from det_al.config import config_from_dict
    from det_al.errors import InputError
    from det_al.loop.rounds import PSEUDO_LABELS, _pseudo_labels_for

    run = LoopRun("top", 0, loop_data())
    saved = pseudo_labelled(run.pool()["images"], [det(3, 0.9, 5)], 0.7, 0.2)
    (tmp_path / "round1").mkdir()
    (tmp_path / "round1" / PSEUDO_LABELS).write_text(json.dumps(saved))
    config = config_from_dict({})
    assert _pseudo_labels_for(run, tmp_path / "round1", None, config, "cpu") == saved
    with pytest.raises(InputError, match="cannot resume self-training"):
        _pseudo_labels_for(run, tmp_path / "round2", tmp_path / "missing.pt", config, "cpu")


def test_a_resume_without_the_rounds_pseudo_labels_scores_the_pool_again(tmp_path, tiny_pool, tiny_checkpoint):
    """No ``pseudo_labels.json`` in the round's folder: the pool is scored again with the
    previous round's checkpoint, and its pseudo-labels are written there and trained on."""
    import dataclasses
    import json

    from det_al.loop.data import LoopData
    from det_al.loop.rounds import PSEUDO_LABELS, _pseudo_labels_for
    from det_al.models.checkpoint import load_checkpoint

    coco = tiny_pool["coco"]
    data = LoopData(labelled={"images": [], "annotations": [], "categories": coco["categories"]}, pool=coco,
                    oracle=coco, val=coco, image_root=tiny_pool["root"], categories=coco["categories"])
    run = LoopRun("top", 0, data)
    run.reveal([1])
    _, config, _, _ = load_checkpoint(tiny_checkpoint)
    config = dataclasses.replace(config, loop=dataclasses.replace(config.loop, pseudo_threshold=0.001, pseudo_ignore=0.0))
    pseudo = _pseudo_labels_for(run, tmp_path / "round1", tiny_checkpoint, config, "cpu")
    assert pseudo["images"] and {im["id"] for im in pseudo["images"]} <= {2, 3, 4, 5, 6}
    assert pseudo["annotations"] and all(a["iscrowd"] == 0 for a in pseudo["annotations"])
    assert json.loads((tmp_path / "round1" / PSEUDO_LABELS).read_text()) == pseudo
