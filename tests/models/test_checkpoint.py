"""Checkpoint round trips, weights_only loading, and every mismatch as an InputError."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from det_al.models.checkpoint import (
    FORMAT,
    CheckpointWriteError,
    category_id_to_label,
    label_to_category_id,
    load_checkpoint,
    save_checkpoint,
)
from det_al.config import config_from_dict
from det_al.errors import InputError
from det_al.models.build import build_model

CATEGORIES = [{"id": 7, "name": "circle"}, {"id": 3, "name": "square"}, {"id": 12, "name": "triangle"}]


def make_config(name="fasterrcnn_tiny", num_classes=4, **options):
    options = {"min_size": 64, "max_size": 64, "box_score_thresh": 0.0, **options}
    return config_from_dict({"model": {"name": name, "num_classes": num_classes, "options": options}})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A fasterrcnn_tiny checkpoint with 3 categories, its model and config."""
    config = make_config()
    torch.manual_seed(0)
    model = build_model(config.model)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, config, CATEGORIES, extra={"epoch": 3, "metrics": {"map": 0.5}})
    return path, model, config


def outputs(model):
    torch.manual_seed(1)
    with torch.no_grad():
        return model([torch.rand(3, 64, 64)])[0]


def test_round_trip_gives_identical_outputs(saved):
    path, model, config = saved
    loaded, loaded_config, categories, extra = load_checkpoint(path)
    assert not loaded.training
    assert loaded_config == config
    assert categories == CATEGORIES
    assert extra == {"epoch": 3, "metrics": {"map": 0.5}}
    a, b = outputs(model), outputs(loaded)
    assert a["boxes"].shape[0] > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(a[key], b[key])


def test_file_is_plain_data_loadable_with_weights_only(saved):
    path, model, _ = saved
    data = torch.load(path, map_location="cpu", weights_only=True)
    assert data["format"] == FORMAT
    assert data["categories"] == CATEGORIES
    assert data["config"]["model"]["name"] == "fasterrcnn_tiny"
    assert set(data["state_dict"]) == set(model.state_dict())


def test_optimizer_state_in_extra_survives_weights_only(tmp_path):
    config = make_config()
    model = build_model(config.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    losses = model([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}])
    sum(losses.values()).backward()
    optimizer.step()
    save_checkpoint(tmp_path / "c.pt", model, config, CATEGORIES, extra={"optimizer": optimizer.state_dict()})
    _, _, _, extra = load_checkpoint(tmp_path / "c.pt")
    fresh = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(extra["optimizer"])
    assert len(fresh.state) == len(optimizer.state)


def test_given_config_wins_for_options(saved):
    path, _, config = saved
    other = dataclasses.replace(
        config, model=dataclasses.replace(config.model, options={"min_size": 64, "max_size": 64, "box_score_thresh": 0.9})
    )
    model, loaded_config, _, _ = load_checkpoint(path, config=other)
    assert loaded_config is other
    assert model.roi_heads.score_thresh == 0.9


def test_wrong_class_count_in_config(saved):
    path, _, _ = saved
    with pytest.raises(InputError, match="checkpoint has 4 classes but config model.num_classes is 6") as e:
        load_checkpoint(path, config=make_config(num_classes=6))
    assert str(path) in str(e.value)


def test_wrong_architecture_in_config(saved):
    path, _, _ = saved
    with pytest.raises(InputError, match="'fasterrcnn_tiny' model but config model.name is 'maskrcnn_tiny'") as e:
        load_checkpoint(path, config=make_config(name="maskrcnn_tiny"))
    assert str(path) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found") as e:
        load_checkpoint(tmp_path / "nope.pt")
    assert str(tmp_path / "nope.pt") in str(e.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not a readable checkpoint") as e:
        load_checkpoint(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_truncated_checkpoint(saved, tmp_path):
    path = tmp_path / "cut.pt"
    path.write_bytes(saved[0].read_bytes()[:5000])
    with pytest.raises(InputError, match="cut.pt"):
        load_checkpoint(path)


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"format": FORMAT, "config": make_config()}, path)  # a dataclass: not weights_only
    with pytest.raises(InputError, match="holds a Python object \(det_al.config.sections.Config\)") as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_state_dict_of_other_class_count(tmp_path):
    """The stored config says 6 classes but the weights were built for 4."""
    config4, config6 = make_config(num_classes=4), make_config(num_classes=6)
    path = tmp_path / "liar.pt"
    save_checkpoint(path, build_model(config4.model), config6, CATEGORIES + [{"id": 1}, {"id": 2}])
    with pytest.raises(InputError, match="checkpoint has 4 classes but config model.num_classes is 6"):
        load_checkpoint(path)


def test_categories_must_match_class_count(saved, tmp_path):
    _, model, config = saved
    with pytest.raises(InputError, match="2 categories but model.num_classes is 4"):
        save_checkpoint(tmp_path / "c.pt", model, config, CATEGORIES[:2])
    assert not (tmp_path / "c.pt").exists()
    data = torch.load(saved[0], weights_only=True)
    data["categories"] = CATEGORIES[:2]
    torch.save(data, tmp_path / "c.pt")
    with pytest.raises(InputError, match="c.pt: checkpoint has 2 categories"):
        load_checkpoint(tmp_path / "c.pt")


def test_plain_state_dict_needs_config_and_takes_categories(saved, tmp_path):
    _, model, config = saved
    path = tmp_path / "user.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(InputError, match="plain state dict"):
        load_checkpoint(path)
    loaded, _, categories, extra = load_checkpoint(path, config=config, categories=CATEGORIES)
    assert categories == CATEGORIES and extra == {}
    assert torch.equal(outputs(model)["boxes"], outputs(loaded)["boxes"])
    _, _, categories, _ = load_checkpoint(path, config=config)
    assert categories == []


def test_references_style_and_data_parallel_state_dicts(saved, tmp_path):
    _, model, config = saved
    path = tmp_path / "ref.pth"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    loaded, _, _, _ = load_checkpoint(path, config=config)
    assert torch.equal(outputs(model)["scores"], outputs(loaded)["scores"])


def test_plain_state_dict_of_other_architecture(saved, tmp_path):
    _, model, _ = saved
    path = tmp_path / "user.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(InputError, match="user.pth: checkpoint does not fit model 'maskrcnn_tiny'.*missing keys"):
        load_checkpoint(path, config=make_config(name="maskrcnn_tiny"))
    with pytest.raises(InputError, match="checkpoint has 4 classes but config model.num_classes is 3"):
        load_checkpoint(path, config=make_config(num_classes=3))


def test_frozen_batchnorm_state_dict_loads_into_batchnorm_model(tmp_path):
    """torchvision's pretrained-backbone checkpoints have no num_batches_tracked keys."""
    config = make_config(name="fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3)
    torch.manual_seed(0)
    model = build_model(config.model)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "frozen.pth")
    loaded, _, _, _ = load_checkpoint(tmp_path / "frozen.pth", config=config)
    assert torch.equal(outputs(model)["boxes"], outputs(loaded)["boxes"])


def test_label_category_maps():
    assert label_to_category_id(CATEGORIES) == {1: 7, 2: 3, 3: 12}
    assert category_id_to_label(CATEGORIES) == {7: 1, 3: 2, 12: 3}
    assert label_to_category_id([]) == {}


def test_extra_must_be_plain_data(saved, tmp_path):
    _, model, config = saved
    path = tmp_path / "c.pt"
    path.write_bytes(b"previous")
    with pytest.raises(TypeError, match=r"extra\['metrics'\]\[1\] is a object"):
        save_checkpoint(path, model, config, CATEGORIES, extra={"metrics": [1, object()]})
    assert path.read_bytes() == b"previous"


def test_save_is_atomic_on_failure(saved, tmp_path, monkeypatch):
    _, model, config = saved
    path = tmp_path / "c.pt"
    path.write_bytes(b"previous")

    def broken_save(obj, f):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CheckpointWriteError, match=r"c.pt: cannot write the checkpoint \(disk full\); nothing half-written"):
        save_checkpoint(path, model, config, CATEGORIES)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
