"""The tiny one-stage models: retinanet_tiny, fcos_tiny, ssd_tiny on 128-px images."""

from __future__ import annotations

import pytest
import torch

from det_al.config import ModelConfig
from det_al.inference.restricted import restrictable
from det_al.models.build import build_model, model_family, model_num_classes

# name -> (family, anchors at 128 px: (16 * 16 + 8 * 8) positions x anchors per position, loss names)
CASES = {
    "retinanet_tiny": ("retinanet", 320 * 9, {"classification", "bbox_regression"}),
    "fcos_tiny": ("fcos", 320 * 1, {"classification", "bbox_regression", "bbox_ctrness"}),
    "ssd_tiny": ("ssd", 320 * 4, {"classification", "bbox_regression"}),
}


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(name, 4, {"score_thresh": 0.0}))


def _anchor_count(model: torch.nn.Module) -> int:
    images = model.transform([torch.rand(3, 128, 128)])[0]
    features = list(model.backbone(images.tensors).values())
    return len(model.anchor_generator(images, features)[0])


@pytest.mark.parametrize("name", sorted(CASES))
def test_detects_on_a_128_px_image_with_the_expected_anchors(name):
    family, anchors, _ = CASES[name]
    model = _build(name)
    assert model_family(model) == family and model_num_classes(model) == 4
    with torch.no_grad():
        assert _anchor_count(model) == anchors
        (out,) = model([torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(0))])
    assert 0 < len(out["boxes"]) <= 50  # detections_per_img
    assert out["boxes"].min() >= 0 and out["boxes"].max() <= 128
    # SSD's softmax leaves background out; RetinaNet's and FCOS's sigmoid heads keep a column for
    # label 0 (torchvision's layout), which training on labels 1..3 never makes a positive
    assert set(out["labels"].tolist()) <= ({1, 2, 3} if family == "ssd" else {0, 1, 2, 3})


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_training_step_gives_finite_losses(name):
    _, _, losses = CASES[name]
    model = _build(name).train()
    target = {"boxes": torch.tensor([[20.0, 30.0, 50.0, 56.0]]), "labels": torch.tensor([2])}
    out = model([torch.rand(3, 128, 128)], [target])
    assert set(out) == losses
    total = sum(out.values())
    total.backward()
    assert torch.isfinite(total)


@pytest.mark.parametrize("name", ["retinanet_tiny", "fcos_tiny"])
def test_one_stage_last_convs_are_plain_3x3_for_the_restricted_tail(name):
    head = _build(name).head
    last = [head.classification_head.cls_logits, head.regression_head.bbox_reg]
    if name == "fcos_tiny":
        last.append(head.regression_head.bbox_ctrness)
    assert all(restrictable(conv) for conv in last)


def test_ssd_head_is_one_plain_3x3_conv_per_level_and_task():
    head = _build("ssd_tiny").head
    for branch in (head.classification_head, head.regression_head):
        assert len(branch.module_list) == 2 and all(restrictable(conv) for conv in branch.module_list)


def test_options_override_the_tiny_one_stage_defaults():
    model = build_model(ModelConfig("retinanet_tiny", 3, {"min_size": 96, "max_size": 96, "detections_per_img": 7}))
    assert model.transform.min_size == (96,) and model.detections_per_img == 7
