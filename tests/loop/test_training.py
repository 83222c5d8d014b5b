"""Training: augmentation consistency, schedule, loss falls, resume, time cap, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from det_al.data.augment import apply_augment, build_augment
from det_al.models.checkpoint import load_checkpoint, save_checkpoint
from det_al.config import TrainConfig, config_from_dict
from det_al.errors import InputError
from det_al.loop.train_setup import check_train_config, lr_factor
from det_al.loop.training import train_model


# --------------------------------------------------------------------------- augment


def _objects():
    """A 40x60 image with two objects: a 10x20 block at (x 5..25, y 4..14) and one at the right edge."""
    image = np.zeros((40, 60, 3), np.uint8)
    masks = np.zeros((2, 40, 60), np.uint8)
    masks[0, 4:14, 5:25] = 1
    masks[1, 20:30, 50:58] = 1
    boxes = np.array([[5, 4, 25, 14], [50, 20, 58, 30]], np.float32)
    return image, boxes, np.array([1, 2]), masks


def _tight_box(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_flip_moves_boxes_and_masks_together():
    image, boxes, labels, masks = _objects()
    transform = build_augment([{"name": "HorizontalFlip", "p": 1.0}])
    _, new_boxes, new_labels, new_masks = apply_augment(transform, image, boxes, labels, masks)
    np.testing.assert_allclose(new_boxes, [[35, 4, 55, 14], [2, 20, 10, 30]])  # x -> 60 - x
    assert new_labels.tolist() == [1, 2]
    for box, mask in zip(new_boxes, new_masks):
        assert _tight_box(mask) == box.tolist()


def test_crop_drops_the_vanished_object_with_its_mask_and_label():
    image, boxes, labels, masks = _objects()
    transform = build_augment([{"name": "Crop", "x_min": 0, "y_min": 0, "x_max": 40, "y_max": 40}])
    new_image, new_boxes, new_labels, new_masks = apply_augment(transform, image, boxes, labels, masks)
    assert new_image.shape == (40, 40, 3)
    assert new_labels.tolist() == [1]
    np.testing.assert_allclose(new_boxes, [[5, 4, 25, 14]])
    assert new_masks.shape == (1, 40, 40) and _tight_box(new_masks[0]) == [5, 4, 25, 14]


def test_augment_without_objects_or_masks():
    transform = build_augment([{"name": "HorizontalFlip", "p": 1.0}, {"name": "RandomBrightnessContrast", "p": 1.0}])
    image = np.zeros((16, 20, 3), np.uint8)
    _, boxes, labels, masks = apply_augment(transform, image, np.zeros((0, 4)), np.zeros(0), np.zeros((0, 16, 20)))
    assert boxes.shape == (0, 4) and labels.shape == (0,) and masks.shape == (0, 16, 20)
    _, boxes, labels, masks = apply_augment(transform, image, np.array([[1, 1, 5, 5]]), np.array([3]), None)
    np.testing.assert_allclose(boxes, [[15, 1, 19, 5]])
    assert masks is None
    assert build_augment([]) is None


@pytest.mark.parametrize(
    "specs, message",
    [
        ([{"name": "HorizontalFlip"}, {"name": "NoSuchTransform"}], r"train\.augment\[1\]: unknown albumentations transform 'NoSuchTransform'"),
        ([{"name": "HorizontalFlip", "prob": 0.5}], r"train\.augment\[0\]: HorizontalFlip has no argument 'prob'"),
        ([{"name": "HorizontalFlip", "p": 2}], r"train\.augment\[0\]: bad arguments for HorizontalFlip"),
        ([{"p": 0.5}], r"train\.augment\[0\] must be a mapping with a 'name' key"),
        ([{"name": "OneOf", "transforms": [{"name": "Blur"}, {"name": "Nope"}]}], r"train\.augment\[0\]\.transforms\[1\]: unknown"),
    ],
)
def test_bad_augment_is_an_input_error(specs, message):
    with pytest.raises(InputError, match=message):
        build_augment(specs)


def test_bad_augment_in_config_fails_before_training(tiny_data, tmp_path):
    config = _config(tiny_data, augment=[{"name": "Flipp"}])
    with pytest.raises(InputError, match=r"train\.augment\[0\]"):
        train_model(config, tiny_data["train"], tiny_data["root"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "last.pt").exists()


# --------------------------------------------------------------------------- schedule and config


def test_lr_factor_by_hand():
    cosine = TrainConfig(epochs=2, warmup_iters=4, schedule="cosine")
    assert lr_factor(0, 10, cosine) == pytest.approx(0.001)  # warm-up starts at 0.001
    assert lr_factor(2, 10, cosine) == pytest.approx((0.001 + 0.999 * 0.5) * 0.5 * (1 + np.cos(np.pi * 2 / 20)))
    assert lr_factor(10, 10, cosine) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_factor(20, 10, cosine) == pytest.approx(0.0)
    step = TrainConfig(epochs=4, warmup_iters=0, schedule="step", milestones=(1, 3), gamma=0.1)
    assert [lr_factor(i * 10, 10, step) for i in range(4)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    assert lr_factor(7, 10, TrainConfig(warmup_iters=0, schedule="constant")) == 1.0


@pytest.mark.parametrize(
    "key, value", [("optimizer", "adam"), ("schedule", "linear"), ("epochs", 0), ("lr", 0.0), ("max_minutes", -1.0)]
)
def test_bad_train_config(key, value):
    with pytest.raises(InputError, match=f"train.{key}"):
        check_train_config(TrainConfig(**{key: value}))


# --------------------------------------------------------------------------- training


def _config(data, model="fasterrcnn_tiny", **train):
    options = {"min_size": 64, "max_size": 64}
    settings = {"epochs": 2, "batch_size": 2, "optimizer": "adamw", "lr": 0.002, "warmup_iters": 0,
                "schedule": "constant", "eval_every": 0, **train}
    return config_from_dict({"model": {"name": model, "num_classes": 4, "options": options}, "train": settings})


def test_loss_falls(tiny_data, tmp_path):
    # one batch of all four images per epoch; the loss of the same batch, epoch after epoch
    config = _config(tiny_data, epochs=6, batch_size=4, lr=0.001, warmup_iters=2)
    summary = train_model(config, tiny_data["train"], tiny_data["root"], tmp_path, progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and summary["epochs"] == 6 and summary["iterations"] == 6
    # the losses are noisy (the RPN and box heads sample anchors and proposals at random)
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2])
    assert summary["final_loss"] == pytest.approx(losses[-1], abs=1e-5)
    assert summary["best"] is None and summary["checkpoint"] == str(tmp_path / "last.pt")
    _, _, categories, extra = load_checkpoint(tmp_path / "last.pt")
    assert [c["id"] for c in categories] == [1, 2, 3] and extra["epoch"] == 6


def test_resume_continues_exactly(tiny_data, tmp_path):
    def config(epochs):
        return _config(tiny_data, epochs=epochs, batch_size=4, lr=0.001)

    straight = train_model(config(3), tiny_data["train"], tiny_data["root"], tmp_path / "a", progress=False)
    train_model(config(2), tiny_data["train"], tiny_data["root"], tmp_path / "b", progress=False)
    resumed = train_model(config(3), tiny_data["train"], tiny_data["root"], tmp_path / "b", resume=True, progress=False)
    assert resumed["epochs"] == 3 and resumed["iterations"] == straight["iterations"] == 3
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    a, _, _, _ = load_checkpoint(tmp_path / "a" / "last.pt")
    b, _, _, _ = load_checkpoint(tmp_path / "b" / "last.pt")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name)
    with pytest.raises(InputError, match="no last.pt"):
        train_model(_config(tiny_data), tiny_data["train"], tiny_data["root"], tmp_path / "c", resume=True)


def test_time_cap_stops_cleanly_and_resumes_mid_epoch(tiny_data, tmp_path):
    config = _config(tiny_data, epochs=2, max_minutes=1e-6)  # passed after the first step
    summary = train_model(config, tiny_data["train"], tiny_data["root"], tmp_path, val_json=tiny_data["val"], progress=False)
    assert summary["stopped_early"] and summary["iterations"] == 1 and summary["epochs"] == 0
    assert summary["best"] == str(tmp_path / "best.pt") and summary["metrics"]["bbox"]["AP"] >= 0
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record["stopped_early"] and "val" in record
    _, _, _, extra = load_checkpoint(tmp_path / "last.pt")
    assert (extra["epoch"], extra["step_in_epoch"], extra["iteration"]) == (0, 1, 1)
    resumed = train_model(_config(tiny_data, epochs=2), tiny_data["train"], tiny_data["root"], tmp_path, resume=True, progress=False)
    assert not resumed["stopped_early"] and resumed["iterations"] == 4 and resumed["epochs"] == 2


def test_init_checkpoint_is_the_starting_point(tiny_data, tmp_path):
    config = _config(tiny_data, epochs=1, lr=1e-12)
    torch.manual_seed(123)
    from det_al.models.build import build_model

    start = build_model(config.model)
    save_checkpoint(tmp_path / "start.pt", start, config, tiny_data["coco"]["categories"])
    train_model(config, tiny_data["train"], tiny_data["root"], tmp_path / "out", init_checkpoint=tmp_path / "start.pt", progress=False)
    trained, _, _, _ = load_checkpoint(tmp_path / "out" / "last.pt")
    for (name, x), y in zip(start.state_dict().items(), trained.state_dict().values()):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0, msg=name)
    wrong = config_from_dict({"model": {"name": "fasterrcnn_tiny", "num_classes": 3}})
    save_checkpoint(tmp_path / "wrong.pt", build_model(wrong.model), wrong, tiny_data["coco"]["categories"][:2])
    with pytest.raises(InputError, match="classes"):
        train_model(config, tiny_data["train"], tiny_data["root"], tmp_path / "o2", init_checkpoint=tmp_path / "wrong.pt")


def test_num_classes_must_match_categories(tiny_data, tmp_path):
    config = config_from_dict({"model": {"name": "fasterrcnn_tiny", "num_classes": 3}})
    with pytest.raises(InputError, match="num_classes is 3 but there are 3 categories"):
        train_model(config, tiny_data["train"], tiny_data["root"], tmp_path)


# --------------------------------------------------------------------------- command line


def test_cli_train_and_evaluate(tiny_data, tmp_path, capsys):
    from det_al.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(
        "model: {name: maskrcnn_tiny, num_classes: 4, options: {min_size: 64, max_size: 64}}\n"
        "train: {epochs: 5, batch_size: 2, augment: [{name: HorizontalFlip, p: 0.5}]}\n"
    )
    out = tmp_path / "run"
    common = ["--train", str(tiny_data["train"]), "--val", str(tiny_data["val"]), "--image-root", str(tiny_data["root"]), "--no-progress"]
    rc = main(["train", str(config), *common, "--out", str(out), "--set", "train.epochs=1", "--seed", "3"])
    assert rc == 0
    assert {p.name for p in out.iterdir()} >= {"last.pt", "best.pt", "metrics.jsonl", "summary.json"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["iterations"] == 2 and summary["config"]["train"]["seed"] == 3
    assert "AP50" in capsys.readouterr().out

    rc = main(["evaluate", "--checkpoint", str(out / "best.pt"), "--val", str(tiny_data["val"]),
               "--image-root", str(tiny_data["root"]), "--out", str(tmp_path / "eval"), "--no-progress"])
    assert rc == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) >= {"bbox", "segm"} and len(metrics["segm"]) == 12
    assert (tmp_path / "eval" / "metrics.txt").read_text().startswith("metric")

    assert main(["train", str(config), *common, "--out", str(out), "--set", "train.optimizer=adam"]) == 2
    assert "train.optimizer" in capsys.readouterr().err

    # an earlier run's checkpoints are kept unless --resume or --overwrite says what to do
    last = (out / "last.pt").read_bytes()
    assert main(["train", str(config), *common, "--out", str(out), "--set", "train.epochs=1"]) == 2
    assert capsys.readouterr().err == (
        f"det-al train: error: {out}: holds the checkpoints of an earlier training (last.pt): "
        "add --resume to continue it, or --overwrite to start over\n"
    )
    assert (out / "last.pt").read_bytes() == last
    assert main(["train", str(config), *common, "--out", str(out), "--resume", "--overwrite"]) == 2
    assert "--resume and --overwrite exclude each other" in capsys.readouterr().err
    # --overwrite that then fails on bad input leaves the earlier run whole
    assert main(["train", str(config), *common, "--out", str(out), "--set", "model.num_classes=3", "--overwrite"]) == 2
    assert "num_classes is 3" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == last and (out / "best.pt").exists()
    assert main(["train", str(config), *common, "--out", str(out), "--set", "train.epochs=1", "--seed", "4", "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["config"]["train"]["seed"] == 4


def test_a_full_disk_while_saving_says_resume_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch, capsys):
    """Issue 26: a traceback before; now one line naming the last good checkpoint, and --resume continues."""
    import yaml

    import det_al.models.checkpoint as checkpoint_module
    from det_al.cli import main

    real_save, calls = torch.save, []

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second epoch's last.pt: what torch.save raises on ENOSPC
            f.write(b"half a checkpoint")
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing "
                               "file data/0: file write failed")
        return real_save(obj, f, *args, **kwargs)

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "fasterrcnn_tiny", "num_classes": 4,
                                                "options": {"min_size": 64, "max_size": 64}},
                                      "train": {"epochs": 3, "batch_size": 4, "warmup_iters": 0, "eval_every": 0}}))
    argv = ["train", str(config), "-t", str(tiny_data["train"]), "-r", str(tiny_data["root"]), "-o", str(tmp_path / "out"),
            "--no-progress"]
    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_the_disk_fills)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "last.pt: cannot write the checkpoint (PytorchStreamWriter failed writing file data/0: file write failed)" in err
    assert f"The last good checkpoint, {tmp_path / 'out' / 'last.pt'} (epoch 1), is kept" in err and "--resume" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["last.pt", "metrics.jsonl"]  # no temporary file left
    assert load_checkpoint(tmp_path / "out" / "last.pt")[3]["epoch"] == 1
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)  # space freed
    assert main(argv + ["--resume"]) == 0
    assert load_checkpoint(tmp_path / "out" / "last.pt")[3]["epoch"] == 3
