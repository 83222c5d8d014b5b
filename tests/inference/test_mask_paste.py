"""Box-frame masks of the stochastic passes (det_al.inference.mask_paste) and the scorer's use of them."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from det_al.inference.detections import Detections
from det_al.inference.mask_paste import paste_masks, paste_masks_in_window
from det_al.scoring.matching import match_passes
from det_al.scoring.uncertainty import mask_disagreement

BOXES = torch.tensor([[3.2, 4.7, 20.9, 15.1],   # inside
                      [-6.0, -3.5, 9.4, 8.0],   # over the top-left corner
                      [30.5, 20.0, 45.0, 33.9],  # over the bottom-right corner
                      [10.0, 10.0, 10.4, 10.3]])  # smaller than a pixel


def test_window_paste_is_the_crop_of_torchvisions_full_paste():
    masks = torch.rand(4, 28, 28, generator=torch.Generator().manual_seed(0))
    full = paste_masks_in_image(masks[:, None], BOXES, (30, 40))[:, 0]  # [4, 30, 40]
    torch.testing.assert_close(paste_masks(masks, BOXES, (30, 40)), full, atol=0, rtol=0)
    for window in [(0, 0, 40, 30), (2, 3, 17, 11), (25, 18, 40, 30), (39, 29, 40, 30)]:
        x0, y0, x1, y1 = window
        got = paste_masks_in_window(masks, BOXES, window)
        assert got.shape == (4, y1 - y0, x1 - x0)
        torch.testing.assert_close(got, full[:, y0:y1, x0:x1], atol=0, rtol=0)
    assert paste_masks_in_window(masks, BOXES, (5, 5, 5, 9)).shape == (4, 4, 0)
    assert paste_masks_in_window(masks[:0], BOXES[:0], (0, 0, 4, 4)).shape == (0, 4, 4)


def test_paste_by_hand():
    """A 2x2 mask of ones in box (1, 1, 3, 3): padded to 4x4 (scale 2), the box grows to (0, 0, 4, 4),
    5 x 5 pixels, and bilinear resizing 4 -> 5 puts 1.0 only where both source taps are the ones:
    the centre pixel, whose source coordinate (2 + 0.5) * 4 / 5 - 0.5 = 1.5 lies between columns 1
    and 2 (weights 0.5, 0.5), both 1."""
    out = paste_masks_in_window(torch.ones(1, 2, 2), torch.tensor([[1.0, 1.0, 3.0, 3.0]]), (0, 0, 6, 6))[0]
    assert out[2, 2].item() == pytest.approx(1.0)
    assert out[5].abs().sum().item() == 0 and out[:, 5].abs().sum().item() == 0  # outside the grown box
    assert out[0, 0].item() == pytest.approx(0.0)  # corner taps are padding


def test_mask_disagreement_is_the_same_for_box_frame_and_full_image_masks():
    g = torch.Generator().manual_seed(1)
    passes_box, passes_full = [], []
    for t in range(3):
        boxes = BOXES[:3] + torch.rand(3, 4, generator=g) * 2
        masks = torch.rand(3, 28, 28, generator=g)
        probs = torch.tensor([[0.1, 0.9]]).repeat(3, 1)
        common = (boxes, probs[:, 1], torch.ones(3, dtype=torch.long), probs)
        passes_box.append(Detections(*common, masks, "softmax", (30, 40)))
        passes_full.append(Detections(*common, paste_masks(masks, boxes, (30, 40))))
    anchor = passes_full[0][[0, 1, 2]]
    objects = match_passes(anchor, passes_full, 0.5)
    full = mask_disagreement(passes_full, objects)
    box = mask_disagreement(passes_box, objects)
    assert (full > 0).all()
    torch.testing.assert_close(box, full, atol=0, rtol=0)
    assert passes_box[0].mask_canvas == (30, 40) == passes_full[0].mask_canvas
    torch.testing.assert_close(passes_box[1].image_masks(), passes_full[1].masks, atol=0, rtol=0)
