"""TTA views: parsing, image transforms, and mapping detections back by hand-computed boxes."""

from __future__ import annotations

import pytest
import torch

from det_al.errors import InputError
from det_al.inference.tta import View, apply_view, parse_views, scaled_transform_sizes, unapply_view, view_size


def test_parse_views():
    assert parse_views(["identity", "hflip", "scale:0.8", "scale:1.25"]) == [
        View("identity", "identity"),
        View("hflip", "hflip"),
        View("scale:0.8", "scale", 0.8),
        View("scale:1.25", "scale", 1.25),
    ]
    assert parse_views([]) == []
    assert parse_views("hflip") == [View("hflip", "hflip")]


@pytest.mark.parametrize("name", ["vflip", "scale", "scale:", "scale:abc", "scale:0", "scale:-1", "scale:inf", "Hflip"])
def test_bad_view_names(name):
    with pytest.raises(InputError, match="passes.tta"):
        parse_views(["hflip", name])


def test_apply_identity_and_hflip():
    image = torch.arange(2 * 3, dtype=torch.float32).reshape(1, 2, 3).expand(3, 2, 3)
    (identity, hflip) = parse_views(["identity", "hflip"])
    assert apply_view(identity, image) is image
    assert apply_view(hflip, image)[0].tolist() == [[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]]


def test_apply_scale_sizes():
    image = torch.rand(3, 100, 60)
    (down, up, odd) = parse_views(["scale:0.8", "scale:1.25", "scale:0.5"])
    assert apply_view(down, image).shape == (3, 80, 48)
    assert apply_view(up, image).shape == (3, 125, 75)
    assert view_size(odd, (5, 7)) == (2, 4)  # round(2.5) == 2, round(3.5) == 4
    constant = torch.full((3, 100, 60), 0.25)
    assert torch.allclose(apply_view(down, constant), torch.full((3, 80, 48), 0.25))


def test_unapply_identity_is_a_no_op():
    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    out, masks = unapply_view(parse_views(["identity"])[0], boxes, None, (10, 10))
    assert torch.equal(out, boxes) and masks is None


def test_unapply_hflip_boxes_by_hand():
    # image 100 wide; a box from x=10 to x=30 in the flipped image is x=70..90 in the original
    boxes = torch.tensor([[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 100.0, 50.0]])
    out, _ = unapply_view(parse_views(["hflip"])[0], boxes, None, (50, 100))
    assert out.tolist() == [[70.0, 5.0, 90.0, 25.0], [0.0, 0.0, 100.0, 50.0]]


def test_unapply_scale_boxes_by_hand():
    # original 100 x 200 (H x W); scale 0.8 -> 80 x 160: a box (8, 16, 40, 80) is (10, 20, 50, 100)
    view = parse_views(["scale:0.8"])[0]
    boxes = torch.tensor([[8.0, 16.0, 40.0, 80.0]])
    out, _ = unapply_view(view, boxes, None, (100, 200))
    assert torch.allclose(out, torch.tensor([[10.0, 20.0, 50.0, 100.0]]))
    # scale 1.25 -> 125 x 250: (25, 50, 250, 125) is (20, 40, 200, 100); clipped to the image
    up = parse_views(["scale:1.25"])[0]
    out, _ = unapply_view(up, torch.tensor([[25.0, 50.0, 250.0, 125.0], [0.0, 0.0, 260.0, 130.0]]), None, (100, 200))
    assert torch.allclose(out, torch.tensor([[20.0, 40.0, 200.0, 100.0], [0.0, 0.0, 200.0, 100.0]]))


def test_unapply_scale_uses_exact_rounded_size():
    # 5 x 7 at scale 0.5 is 2 x 4 (rounded): x scales by 7/4, y by 5/2
    view = parse_views(["scale:0.5"])[0]
    out, _ = unapply_view(view, torch.tensor([[4.0, 2.0, 4.0, 2.0]]), None, (5, 7))
    assert torch.allclose(out, torch.tensor([[7.0, 5.0, 7.0, 5.0]]))


def test_hflip_mask_round_trip_is_exact():
    mask = torch.zeros(1, 6, 8)
    mask[0, 1:3, 0:2] = 1.0
    view = parse_views(["hflip"])[0]
    flipped = apply_view(view, mask.expand(3, 6, 8))[:1]
    assert flipped[0, 1:3, 6:8].eq(1).all() and flipped.sum() == 4
    boxes, back = unapply_view(view, torch.tensor([[6.0, 1.0, 8.0, 3.0]]), flipped, (6, 8))
    assert torch.equal(back, mask)
    assert boxes.tolist() == [[0.0, 1.0, 2.0, 3.0]]


@pytest.mark.parametrize("name", ["scale:0.8", "scale:1.25"])
def test_scale_mask_round_trip(name):
    view = parse_views([name])[0]
    mask = torch.zeros(1, 40, 60)
    mask[0, 10:30, 15:45] = 1.0
    scaled = apply_view(view, mask.expand(3, 40, 60))[:1]
    assert scaled.shape[-2:] == view_size(view, (40, 60))
    boxes, back = unapply_view(view, torch.zeros(1, 4), scaled, (40, 60))
    assert back.shape == (1, 40, 60)
    binary = back > 0.5
    iou = (binary & mask.bool()).sum() / (binary | mask.bool()).sum()
    assert iou > 0.9
    assert binary[0, 12:28, 17:43].all() and not binary[0, :, :10].any()


def test_unapply_empty_detections():
    view = parse_views(["scale:0.8"])[0]
    boxes, masks = unapply_view(view, torch.zeros(0, 4), torch.zeros(0, 80, 160), (100, 200))
    assert boxes.shape == (0, 4) and masks.shape == (0, 100, 200)


def test_unapply_rejects_bad_shapes():
    view = parse_views(["hflip"])[0]
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        unapply_view(view, torch.zeros(3), None, (10, 10))
    with pytest.raises(ValueError, match=r"\(2, H, W\)"):
        unapply_view(view, torch.zeros(2, 4), torch.zeros(2, 1, 10, 10), (10, 10))


def test_scaled_transform_sizes():
    identity, hflip, down, up = parse_views(["identity", "hflip", "scale:0.8", "scale:1.25"])
    assert scaled_transform_sizes(identity, (800,), 1333) == ((800,), 1333)
    assert scaled_transform_sizes(hflip, 128, 128) == ((128,), 128)
    assert scaled_transform_sizes(down, (800,), 1333) == ((640,), 1066)  # 1066.4 rounds down
    assert scaled_transform_sizes(up, [96, 128], 128) == ((120, 160), 160)


def test_scale_view_end_to_end_on_tiny_model():
    """A model run on the scaled image, mapped back, lands in original pixel coordinates."""
    from det_al.config import ModelConfig
    from det_al.models.build import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig("fasterrcnn_tiny", 3, {"min_size": 64, "max_size": 200, "box_score_thresh": 0.0}))
    image = torch.rand(3, 64, 96)
    view = parse_views(["scale:1.25"])[0]
    scaled = apply_view(view, image)
    assert scaled.shape == (3, 80, 120)
    with torch.no_grad():
        (out,) = model([scaled])
    # the transform resized 80 -> 64 internally; postprocess mapped its boxes back to 80 x 120
    assert out["boxes"][:, 2].max() <= 120 and out["boxes"][:, 3].max() <= 80
    boxes, _ = unapply_view(view, out["boxes"], None, (64, 96))
    assert torch.allclose(boxes, out["boxes"] / 1.25, atol=1e-4)
