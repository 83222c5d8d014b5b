"""Mask R-CNN masks in the box frame, pasted where they are needed.

The mask head predicts an ``M x M`` (28 x 28) probability map in the frame of each detection's
box; torchvision's ``paste_masks_in_image`` turns it into a full-image map. The stochastic
passes keep their masks in the box frame (``Detections.image_size`` set): T full-image maps per
detection cost time and, on a 12-megapixel photo, gigabytes. :func:`paste_masks_in_window`
pastes them into a small window of the image instead, with torchvision's own arithmetic
(``expand_masks``, ``expand_boxes``, integer box, bilinear resize), so the window holds exactly
the pixels a full paste would put there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import expand_masks


def paste_masks_in_window(masks: Tensor, boxes: Tensor, window: tuple[int, int, int, int]) -> Tensor:
    """``[N, y1 - y0, x1 - x0]``: box-frame masks pasted into the window ``(x0, y0, x1, y1)``.

    Args:
        masks: ``[N, M, M]`` mask probabilities in the frame of each box.
        boxes: ``[N, 4]`` xyxy pixels of the image the window lies in.
        window: integer pixel bounds inside the image (``x1``, ``y1`` exclusive).

    Equal to ``paste_masks_in_image(masks[:, None], boxes, (H, W))[:, 0, y0:y1, x0:x1]``.

    >>> m = torch.ones(1, 4, 4)
    >>> paste_masks_in_window(m, torch.tensor([[2.0, 2.0, 5.0, 5.0]]), (0, 0, 8, 8))[0].sum().item() > 0
    True
    """
    x0, y0, x1, y1 = (int(v) for v in window)
    out = masks.new_zeros((masks.shape[0], max(y1 - y0, 0), max(x1 - x0, 0)))
    if masks.shape[0] == 0 or y1 <= y0 or x1 <= x0:
        return out
    padded, scale = expand_masks(masks[:, None], padding=1)
    frames = _expand_boxes(boxes.to(padded.dtype), scale).to(torch.int64).tolist()
    for k, (bx0, by0, bx1, by1) in enumerate(frames):
        xa, xb, ya, yb = max(bx0, x0), min(bx1 + 1, x1), max(by0, y0), min(by1 + 1, y1)
        if xb <= xa or yb <= ya:
            continue
        size = (max(by1 - by0 + 1, 1), max(bx1 - bx0 + 1, 1))
        resized = F.interpolate(padded[k : k + 1], size=size, mode="bilinear", align_corners=False)[0, 0]
        out[k, ya - y0 : yb - y0, xa - x0 : xb - x0] = resized[ya - by0 : yb - by0, xa - bx0 : xb - bx0]
    return out


def _expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """torchvision's ``expand_boxes`` (each box scaled by ``scale`` about its centre), same
    float arithmetic, without its per-call overhead."""
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    centre = (boxes[:, 2:] + boxes[:, :2]) * 0.5
    return torch.cat([centre - half, centre + half], 1)


def paste_masks(masks: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``[N, H, W]``: box-frame masks ``[N, M, M]`` pasted into the whole image."""
    return paste_masks_in_window(masks, boxes, (0, 0, int(image_size[1]), int(image_size[0])))
