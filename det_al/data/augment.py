"""Training augmentation: an albumentations pipeline built from ``train.augment``.

The config lists transforms by their albumentations class name with their arguments::

    train:
      augment:
        - {name: HorizontalFlip, p: 0.5}
        - {name: RandomBrightnessContrast, p: 0.3}
        - name: OneOf                      # compositions take a list of transforms
          p: 0.5
          transforms: [{name: Blur}, {name: GaussNoise}]

Boxes travel as ``pascal_voc`` (``x1, y1, x2, y2`` pixels), masks as one ``[H, W]`` array per
object. An object whose box the pipeline drops (cropped out of the image) loses its mask and
label with it, and an object whose mask is emptied loses its box, so boxes, masks and labels
always describe the same objects.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Mapping, Sequence

import albumentations as A
import numpy as np
from albumentations.core.type_definitions import Targets

from det_al.errors import InputError

__all__ = ["build_augment", "apply_augment"]


def _build_one(spec: Any, where: str) -> Any:
    """One albumentations transform (or composition) from its config entry ``spec``."""
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise InputError(f"{where} must be a mapping with a 'name' key, got {spec!r}")
    name = spec["name"]
    cls = getattr(A, name, None) if isinstance(name, str) and not name.startswith("_") else None
    if not (inspect.isclass(cls) and issubclass(cls, (A.BasicTransform, A.BaseCompose))):
        raise InputError(f"{where}: unknown albumentations transform '{name}'")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if cls is A.Compose:
        raise InputError(f"{where}: use Sequential, not a nested Compose")
    if issubclass(cls, A.BaseCompose):
        children = kwargs.get("transforms")
        if not isinstance(children, (list, tuple)) or not children:
            raise InputError(f"{where}: {name} needs a non-empty 'transforms' list")
        kwargs["transforms"] = [
            _build_one(child, f"{where}.transforms[{j}]") for j, child in enumerate(children)
        ]
    else:
        targets = set(getattr(cls, "_targets", ()))
        if Targets.MASK in targets and Targets.BBOXES not in targets:
            raise InputError(f"{where}: {name} moves pixels but cannot move bounding boxes")
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params) - {"self"})
        if unknown:
            valid = ", ".join(sorted(set(params) - {"self"}))
            raise InputError(f"{where}: {name} has no argument '{unknown[0]}' (valid: {valid})")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        message = " ".join(str(e).split(" For further information")[0].split())
        raise InputError(f"{where}: bad arguments for {name}: {message}") from e


def build_augment(specs: Sequence[Mapping[str, Any]], where: str = "train.augment") -> A.Compose | None:
    """Build the training pipeline from ``train.augment``; ``None`` when the list is empty.

    Each entry is ``{name: <albumentations class>, **arguments}``; compositions (``OneOf``,
    ``SomeOf``, ``Sequential``) take ``transforms: [...]``. An unknown name or argument is an
    :class:`InputError` naming the entry (``train.augment[1]``).
    """
    if not specs:
        return None
    transforms = [_build_one(spec, f"{where}[{i}]") for i, spec in enumerate(specs)]
    bbox_params = A.BboxParams(
        format="pascal_voc", label_fields=["labels", "indices"], clip=True, min_area=1.0,
        min_width=1.0, min_height=1.0,
    )
    with warnings.catch_warnings():  # a pixel-only pipeline is fine: boxes pass through
        warnings.filterwarnings("ignore", message="Got processor for bboxes")
        return A.Compose(transforms, bbox_params=bbox_params)


def apply_augment(
    transform: A.Compose,
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Run ``transform`` on one image and its objects, keeping the objects consistent.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        boxes: ``[N, 4]`` float ``x1, y1, x2, y2`` pixels.
        labels: ``[N]`` int labels.
        masks: ``[N, H, W]`` uint8 binary masks, or ``None``.

    Returns:
        ``(image [H', W', 3], boxes [M, 4] float32, labels [M] int64, masks [M, H', W'] uint8
        or None)``: the ``M <= N`` objects that survived, in their original order.
    """
    n = len(boxes)
    data: dict[str, Any] = {
        "image": image,
        "bboxes": np.asarray(boxes, dtype=np.float32).reshape(n, 4),
        "labels": np.asarray(labels, dtype=np.int64).reshape(n),
        "indices": np.arange(n),
    }
    if masks is not None and n > 0:  # albumentations cannot stack an empty list of masks
        data["masks"] = np.asarray(masks, dtype=np.uint8)
    out = transform(**data)
    new_image = out["image"]
    height, width = new_image.shape[:2]
    keep = np.asarray(out["indices"], dtype=np.int64).reshape(-1)
    # albumentations works in normalised coordinates: round its float noise (35.000004 -> 35)
    new_boxes = np.round(np.asarray(out["bboxes"], dtype=np.float64).reshape(-1, 4), 3).astype(np.float32)
    new_labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
    if masks is None:
        return new_image, new_boxes, new_labels, None
    if n == 0:
        return new_image, new_boxes, new_labels, np.zeros((0, height, width), dtype=np.uint8)
    new_masks = np.asarray(out["masks"], dtype=np.uint8)[keep]
    visible = new_masks.reshape(len(keep), -1).any(axis=1)
    return new_image, new_boxes[visible], new_labels[visible], new_masks[visible]
