"""Builders, families, option checks, and the shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from det_al.config import ModelConfig, load_config
from det_al.errors import InputError
from det_al.models.build import (
    BUILDERS,
    build_model,
    count_parameters,
    get_builder,
    has_masks,
    model_family,
    model_num_classes,
    prob_kind,
)

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))

# name -> (family, has masks, options for a tiny forward)
SMALL = {"min_size": 64, "max_size": 64}
CASES = {
    "fasterrcnn_resnet50_fpn": ("rcnn", False, SMALL),
    "fasterrcnn_resnet50_fpn_v2": ("rcnn", False, SMALL),
    "fasterrcnn_mobilenet_v3_large_fpn": ("rcnn", False, SMALL),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("rcnn", False, SMALL),
    "maskrcnn_resnet50_fpn": ("rcnn", True, SMALL),
    "maskrcnn_resnet50_fpn_v2": ("rcnn", True, SMALL),
    "retinanet_resnet50_fpn": ("retinanet", False, SMALL),
    "retinanet_resnet50_fpn_v2": ("retinanet", False, SMALL),
    "fcos_resnet50_fpn": ("fcos", False, SMALL),
    "ssd300_vgg16": ("ssd", False, {"score_thresh": 0.0}),
    "ssdlite320_mobilenet_v3_large": ("ssd", False, {"score_thresh": 0.0}),
    "fasterrcnn_tiny": ("rcnn", False, {"box_score_thresh": 0.0}),
    "maskrcnn_tiny": ("rcnn", True, {"box_score_thresh": 0.0}),
    "retinanet_tiny": ("retinanet", False, SMALL),
    "fcos_tiny": ("fcos", False, SMALL),
    "ssd_tiny": ("ssd", False, {"score_thresh": 0.0}),
}


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Any attempt to fetch weights fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"attempted download: {args} {kwargs}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)


def test_cases_cover_every_builder():
    assert set(CASES) == set(BUILDERS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_builder_builds_and_runs_one_forward(name):
    family, masks, options = CASES[name]
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, num_classes=3, options=options))
    assert not model.training
    assert model_family(model) == family
    assert has_masks(model) is masks
    assert model_num_classes(model) == 3
    with torch.no_grad():
        (out,) = model([torch.rand(3, 64, 64)])
    n = out["boxes"].shape[0]
    assert out["boxes"].shape == (n, 4)
    assert out["scores"].shape == out["labels"].shape == (n,)
    if n:
        assert out["labels"].min() >= 1 and out["labels"].max() <= 2
        assert out["boxes"][:, 2].max() <= 64 and out["boxes"][:, 3].max() <= 64
    assert ("masks" in out) is masks
    if masks:
        assert out["masks"].shape == (n, 1, 64, 64)


def test_tiny_models_are_small_and_detect_with_threshold_zero():
    model = build_model(ModelConfig("maskrcnn_tiny", 4, {"box_score_thresh": 0.0}))
    assert count_parameters(model) < 3_000_000
    assert model.transform.min_size == (128,) and model.transform.max_size == 128
    torch.manual_seed(0)
    with torch.no_grad():
        (out,) = model([torch.rand(3, 100, 140)])
    assert out["boxes"].shape[0] > 0
    assert out["masks"].shape[-2:] == (100, 140)


def test_options_override_tiny_defaults():
    model = build_model(ModelConfig("fasterrcnn_tiny", 3, {"min_size": 96, "max_size": 160}))
    assert model.transform.min_size == (96,) and model.transform.max_size == 160
    model = build_model(ModelConfig("fasterrcnn_tiny", 3, {"min_size": [96, 128]}))
    assert tuple(model.transform.min_size) == (96, 128)


def test_options_pass_through_to_torchvision():
    model = build_model(
        ModelConfig("retinanet_resnet50_fpn", 3, {"min_size": 64, "max_size": 64, "score_thresh": 0.3})
    )
    assert model.score_thresh == 0.3 and model.transform.max_size == 64


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="fasterrcnn_tiny"):
        get_builder("yolo")
    with pytest.raises(InputError, match="unknown model 'yolo'.*maskrcnn_tiny"):
        build_model(ModelConfig("yolo", 3))


@pytest.mark.parametrize(
    "options, pattern",
    [
        ({"min_sise": 64}, "model.options.min_sise"),
        ({"weights": "DEFAULT"}, "model.options.weights"),
        ({"num_classes": 5}, "model.options.num_classes"),
        ({"box_head": {"a": 1}}, "model.options.box_head"),
        ({"min_size": "big"}, "model.options.min_size must be a number"),
        ({"box_score_thresh": True}, "model.options.box_score_thresh must be a number"),
    ],
)
def test_bad_option_names_the_option(options, pattern):
    with pytest.raises(InputError, match=pattern):
        build_model(ModelConfig("fasterrcnn_tiny", 3, options))


def test_ssd_rejects_rcnn_only_option():
    with pytest.raises(InputError, match="model.options.min_size"):
        build_model(ModelConfig("ssdlite320_mobilenet_v3_large", 3, {"min_size": 64}))


@pytest.mark.parametrize(
    "family, kind", [("rcnn", "softmax"), ("ssd", "softmax"), ("retinanet", "sigmoid"), ("fcos", "sigmoid")]
)
def test_prob_kind(family, kind):
    assert prob_kind(family) == kind


def test_prob_kind_and_family_reject_unknown():
    with pytest.raises(ValueError, match="yolo"):
        prob_kind("yolo")
    with pytest.raises(ValueError, match="Linear"):
        model_family(torch.nn.Linear(2, 2))


def test_every_builder_family_has_a_config():
    assert CONFIGS, "configs/ holds no YAML files"
    names = {load_config(p).model.name for p in CONFIGS}
    for required in (
        "fasterrcnn_resnet50_fpn",
        "maskrcnn_resnet50_fpn",
        "retinanet_resnet50_fpn",
        "fcos_resnet50_fpn",
        "ssd300_vgg16",
        "ssdlite320_mobilenet_v3_large",
        "fasterrcnn_mobilenet_v3_large_fpn",
        "maskrcnn_tiny",
    ):
        assert required in names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_loads_and_names_valid_options(path):
    from det_al.models.build import valid_options

    config = load_config(path)
    assert config.model.name in BUILDERS
    assert config.model.num_classes is None or config.model.num_classes >= 2  # None: from the data
    assert set(config.model.options) <= valid_options(config.model.name)


def test_demo_config_is_tiny_mask_rcnn_with_three_classes():
    config = load_config(Path(CONFIGS[0]).parent / "demo.yaml")
    assert config.model.name == "maskrcnn_tiny" and config.model.num_classes == 4
