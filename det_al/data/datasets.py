"""The torch datasets of det_al: pool images for scoring and labelled images for training.

:class:`PoolDataset` reads pool images lazily and never raises on a bad file. Each item is
``{"image_id", "file_name", "image"}`` with ``image`` a ``[3, H, W]`` float tensor in ``[0, 1]``
(EXIF applied, see :mod:`det_al.data.images`), or ``{"image_id", "file_name", "error"}`` with a
one-line reason when the file cannot be read, so that a ``DataLoader`` with worker processes
goes on past it and the caller lists the image as skipped.

Memory: the images are held as :class:`~det_al.data.pool.PoolImages` (numpy arrays and one packed
byte buffer) rather than a list of dicts. Pools of millions of entries stay small, and worker
processes do not slowly copy the parent's memory by touching Python reference counts (the
copy-on-access growth that lists of Python objects cause with ``num_workers > 0``).

:class:`CocoDetectionDataset` turns a labelled COCO dict into torchvision's training pairs.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.ops import box_convert, clip_boxes_to_image

from det_al.errors import InputError
from det_al.data.images import MAX_PIXELS, ImageReadError, read_image, to_tensor
from det_al.data.pool import PoolImages, as_pool_images
from det_al.data.segmentation import segmentation_to_mask

logger = logging.getLogger(__name__)


class PoolDataset(Dataset):
    """The images of a COCO pool, read one at a time from ``image_root / file_name``.

    Args:
        coco: :class:`~det_al.data.pool.PoolImages`, a COCO dict (only its ``images`` are used) or
            the list of image dicts itself; each needs ``id`` and ``file_name`` (an absolute
            ``file_name`` ignores the root). Names that escape the root are not checked here:
            :func:`det_al.run.checks.check_pool` refuses them before a run starts.
        image_root: the folder ``file_name`` is relative to.
        max_pixels: images with more pixels are skipped (see :func:`det_al.data.images.read_image`).
    """

    def __init__(
        self,
        coco: PoolImages | dict | Sequence[dict],
        image_root: str | os.PathLike,
        max_pixels: int = MAX_PIXELS,
    ):
        self.images = as_pool_images(coco["images"] if isinstance(coco, dict) else coco)
        self.image_root = Path(image_root)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.images)

    def image_id(self, index: int) -> int:
        return self.images.image_id(index)

    def file_name(self, index: int) -> str:
        return self.images.file_name(index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a pool of {len(self)} images")
        item: dict[str, Any] = {"image_id": self.image_id(index), "file_name": self.file_name(index)}
        try:
            item["image"] = to_tensor(read_image(self.image_root / item["file_name"], self.max_pixels))
        except ImageReadError as e:
            item["error"] = e.reason
        except Exception as e:  # never stop a pool over one image; keep the reason
            logger.debug("unexpected error reading %s", item["file_name"], exc_info=True)
            item["error"] = f"unexpected error: {type(e).__name__}: {' '.join(str(e).split())}"
        return item


def pool_collate(batch: list[dict]) -> list[dict]:
    """Keep a batch as the list of its items (images differ in size; some are skip records)."""
    return list(batch)


def erase_boxes(
    pixels: np.ndarray, boxes: Sequence[Sequence[float]], keep: Sequence[Sequence[float]] = ()
) -> np.ndarray:
    """A copy of ``pixels`` ``[H, W, C]`` with each ``xywh`` box of ``boxes`` (clipped to the
    image, widened to whole pixels) filled with the image's per-channel mean colour, rounded,
    except where an ``xywh`` box of ``keep`` (the image's labelled objects) lies.

    >>> img = np.array([[[0], [4]], [[8], [12]]], dtype=np.uint8)  # mean 6
    >>> erase_boxes(img, [[0.5, 0, 0.2, 1]])[..., 0].tolist()  # column 0, row 0
    [[6, 4], [8, 12]]
    >>> erase_boxes(img, [[0, 0, 2, 2]], keep=[[1, 1, 1, 1]])[..., 0].tolist()  # all but (1, 1)
    [[6, 6], [6, 12]]
    """
    height, width = pixels.shape[:2]

    def region(box: Sequence[float]) -> tuple[slice, slice]:
        x, y, w, h = (float(v) for v in box)
        x0, y0 = max(0, int(math.floor(x))), max(0, int(math.floor(y)))
        x1, y1 = min(width, int(math.ceil(x + w))), min(height, int(math.ceil(y + h)))
        return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))

    erase = np.zeros((height, width), dtype=bool)
    for box in boxes:
        erase[region(box)] = True
    for box in keep:
        erase[region(box)] = False
    out = pixels.copy()
    out[erase] = np.round(pixels.reshape(-1, pixels.shape[-1]).mean(axis=0)).astype(pixels.dtype)
    return out


class CocoDetectionDataset(Dataset):
    """The images of a COCO dict as torchvision detection training pairs.

    Item ``i`` is ``(image, target)``: ``image`` ``[3, H, W]`` float in ``[0, 1]``;
    ``target`` has ``boxes`` ``[N, 4]`` float xyxy pixels, ``labels`` ``[N]`` int64 contiguous
    labels (``categories[l - 1]`` has label ``l``), ``image_id`` (int) and, with
    ``with_masks``, ``masks`` ``[N, H, W]`` uint8. Crowd annotations are skipped; an image
    without annotations gives empty targets (a pure-background example). An annotation without
    a ``segmentation`` gets its box as mask. ``transform`` is an albumentations pipeline from
    :func:`det_al.data.augment.build_augment`.

    An annotation with ``"iscrowd": 1`` and ``"ignore": 1`` (self-training's uncertain
    pseudo-labels) is an ignore region: torchvision's detectors have none, so its box is painted
    over with the image's mean colour (:func:`erase_boxes`; never inside the image's labelled
    boxes) before augmentation and gives no target.

    Raises :class:`InputError` for an annotation whose category is not in ``categories`` (at
    construction) and for an image that cannot be read (when the item is loaded).
    """

    def __init__(
        self,
        coco: Mapping[str, Any],
        image_root: str | os.PathLike,
        categories: Sequence[Mapping[str, Any]],
        transform: Any = None,
        with_masks: bool = False,
    ):
        self.images = list(coco.get("images", []))
        self.image_root = Path(image_root)
        self.transform = transform
        self.with_masks = with_masks
        self.label_of = {int(c["id"]): label for label, c in enumerate(categories, start=1)}
        self.annotations: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
        self.ignored: dict[Any, list[Sequence[float]]] = defaultdict(list)
        for ann in coco.get("annotations", []):
            if ann.get("ignore", 0) and ann.get("iscrowd", 0):
                self.ignored[ann["image_id"]].append(ann["bbox"])
                continue
            if ann.get("iscrowd", 0):
                continue
            if int(ann["category_id"]) not in self.label_of:
                raise InputError(
                    f"annotation {ann.get('id')} (image {ann['image_id']}) has category id "
                    f"{ann['category_id']}, which is not one of the model's categories "
                    f"{sorted(self.label_of)}"
                )
            self.annotations[ann["image_id"]].append(ann)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        info = self.images[index]
        path = self.image_root / info["file_name"]
        try:
            pixels = read_image(path)
        except ImageReadError as e:
            raise InputError(f"cannot read training image: {e.reason}", e.path) from None
        height, width = pixels.shape[:2]
        anns = self.annotations.get(info["id"], [])
        if self.ignored.get(info["id"]):
            pixels = erase_boxes(pixels, self.ignored[info["id"]], keep=[a["bbox"] for a in anns])
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = clip_boxes_to_image(box_convert(boxes, "xywh", "xyxy"), (height, width))
        valid = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).tolist()
        anns = [a for a, ok in zip(anns, valid) if ok]
        boxes = boxes[torch.tensor(valid, dtype=torch.bool)].numpy()
        labels = np.array([self.label_of[int(a["category_id"])] for a in anns], dtype=np.int64)
        masks = None
        if self.with_masks:
            masks = np.zeros((len(anns), height, width), dtype=np.uint8)
            for k, (ann, box) in enumerate(zip(anns, boxes)):
                if ann.get("segmentation"):
                    try:
                        masks[k] = segmentation_to_mask(ann["segmentation"], height, width)
                    except ValueError as e:
                        raise InputError(
                            f"annotation {ann.get('id')} (image {info['id']}): bad segmentation: {e}"
                        ) from None
                else:
                    x1, y1, x2, y2 = box
                    masks[k, int(y1) : math.ceil(y2), int(x1) : math.ceil(x2)] = 1
        if self.transform is not None:
            # here, not at the top: albumentations takes ~0.5 s to import and scoring never needs it
            from det_al.data.augment import apply_augment

            pixels, boxes, labels, masks = apply_augment(self.transform, pixels, boxes, labels, masks)
        target: dict[str, Any] = {
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64)).reshape(-1),
            "image_id": info["id"],
        }
        if masks is not None:
            target["masks"] = torch.as_tensor(np.ascontiguousarray(masks, dtype=np.uint8))
        return to_tensor(np.ascontiguousarray(pixels)), target


def collate_detection(batch: Sequence[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """A batch of ``(image, target)`` pairs -> ``(images, targets)`` lists (torchvision's input)."""
    images, targets = zip(*batch)
    return list(images), list(targets)
