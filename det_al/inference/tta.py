"""Test-time augmentation views: transform an image, map its detections back.

A view is named ``identity``, ``hflip`` (horizontal flip) or ``scale:S`` (resize the image by
the factor ``S > 0``, e.g. ``scale:0.8``, ``scale:1.25``). :func:`apply_view` transforms the
input image; the model then reports detections in the coordinates of the *transformed* image
(torchvision's ``GeneralizedRCNNTransform.postprocess`` undoes only its own internal resize),
and :func:`unapply_view` maps them back to pixels of the original image.

A scaled image has size ``(round(H * S), round(W * S))``; boxes are mapped back with the exact
per-axis factors ``H / H_scaled`` and ``W / W_scaled`` (``1 / S`` up to rounding).

Caveat for ``scale:S``: torchvision's transform resizes every input so its short side is
``transform.min_size`` (capped by ``max_size``; SSD always uses its fixed size), so a rescaled
*input* reaches the network at the same size as the original, only resampled. For the network
to really see the object ``S`` times larger, run the original image with the transform's sizes
scaled instead (:func:`scaled_transform_sizes`); ``postprocess`` then maps the detections back
to the original image itself and no :func:`unapply_view` is needed for the scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.ops import clip_boxes_to_image

from det_al.errors import InputError

KINDS = ("identity", "hflip", "scale")


@dataclass(frozen=True)
class View:
    """One test-time view: ``kind`` is ``identity``, ``hflip`` or ``scale`` (with ``factor``)."""

    name: str
    kind: str
    factor: float = 1.0


def parse_view(name: str) -> View:
    """``"hflip"`` -> ``View("hflip", "hflip")``, ``"scale:0.8"`` -> ``View("scale:0.8", "scale", 0.8)``."""
    if not isinstance(name, str):
        raise InputError(f"passes.tta: a view name must be a string, got {name!r}")
    text = name.strip()
    if text in ("identity", "hflip"):
        return View(text, text)
    if text.startswith("scale:"):
        raw = text[len("scale:"):]
        try:
            factor = float(raw)
        except ValueError:
            factor = float("nan")
        if not math.isfinite(factor) or factor <= 0:
            raise InputError(f"passes.tta: view '{name}' needs a positive scale factor, e.g. scale:0.8")
        return View(text, "scale", factor)
    raise InputError(f"passes.tta: unknown view '{name}' (valid: identity, hflip, scale:S with S > 0)")


def parse_views(names: Iterable[str]) -> list[View]:
    """Parse view names in order; a bad name is an :class:`InputError` naming it."""
    if isinstance(names, str):
        names = [names]
    return [parse_view(n) for n in names]


def view_size(view: View, size: tuple[int, int]) -> tuple[int, int]:
    """The ``(height, width)`` of an image of size ``size`` after ``view``."""
    h, w = int(size[0]), int(size[1])
    if view.kind != "scale":
        return h, w
    return max(1, round(h * view.factor)), max(1, round(w * view.factor))


def scaled_transform_sizes(
    view: View, min_size: tuple[int, ...] | int, max_size: int
) -> tuple[tuple[int, ...], int]:
    """``GeneralizedRCNNTransform`` sizes ``(min_size, max_size)`` under ``view``.

    For ``scale:S`` both are multiplied by ``S`` (rounded, at least 1); other views keep them.
    """
    sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
    if view.kind != "scale":
        return tuple(int(s) for s in sizes), int(max_size)
    return tuple(max(1, round(s * view.factor)) for s in sizes), max(1, round(max_size * view.factor))


def apply_view(view: View, image: Tensor) -> Tensor:
    """The image ``[3, H, W]`` (float) as ``view`` sees it: ``[3, H', W']``.

    ``hflip`` mirrors the columns; ``scale:S`` resizes bilinearly (antialiased when shrinking)
    to :func:`view_size`. ``identity`` returns ``image`` itself.
    """
    if image.ndim != 3:
        raise ValueError(f"expected an image of shape (C, H, W), got {tuple(image.shape)}")
    if view.kind == "identity":
        return image
    if view.kind == "hflip":
        return image.flip(-1)
    size = view_size(view, tuple(image.shape[-2:]))
    if size == tuple(image.shape[-2:]):
        return image
    out = F.interpolate(
        image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=view.factor < 1
    )[0]
    return out.to(image.dtype)


def unapply_view(
    view: View, boxes: Tensor, masks: Tensor | None, orig_size: tuple[int, int]
) -> tuple[Tensor, Tensor | None]:
    """Map detections made on the ``view`` of an image back to the original image.

    Args:
        boxes: ``[N, 4]`` ``(x1, y1, x2, y2)`` pixels of the transformed image.
        masks: ``[N, H', W']`` mask probabilities in the transformed image's size, or ``None``.
        orig_size: ``(H, W)`` of the original image.

    Returns:
        boxes ``[N, 4]`` in original pixels (clipped to the image) and masks ``[N, H, W]``
        (flipped back, or resized bilinearly to ``(H, W)``), or ``None``.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"expected boxes of shape (N, 4), got {tuple(boxes.shape)}")
    if masks is not None and (masks.ndim != 3 or masks.shape[0] != boxes.shape[0]):
        raise ValueError(f"expected masks of shape ({boxes.shape[0]}, H, W), got {tuple(masks.shape)}")
    h, w = int(orig_size[0]), int(orig_size[1])
    if view.kind == "identity":
        return boxes, masks
    if view.kind == "hflip":
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        return boxes, None if masks is None else masks.flip(-1)
    vh, vw = view_size(view, (h, w))
    factors = boxes.new_tensor([w / vw, h / vh, w / vw, h / vh])
    boxes = clip_boxes_to_image(boxes * factors, (h, w))
    if masks is not None:
        if masks.shape[0] == 0:
            masks = masks.new_zeros((0, h, w))
        elif tuple(masks.shape[-2:]) != (h, w):
            masks = F.interpolate(masks[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    return boxes, masks


__all__ = [
    "KINDS",
    "View",
    "apply_view",
    "parse_view",
    "parse_views",
    "scaled_transform_sizes",
    "unapply_view",
    "view_size",
]
