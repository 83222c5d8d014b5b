"""``PoolDataset``: pool images for scoring, read lazily, never raising on a bad file.

Each item is ``{"image_id", "file_name", "image"}`` with ``image`` a ``[3, H, W]`` float tensor
in ``[0, 1]`` (EXIF applied, see :mod:`det_al.images`), or ``{"image_id", "file_name",
"error"}`` with a one-line reason when the file cannot be read, so that a ``DataLoader`` with
worker processes goes on past it and the caller lists the image as skipped.

Memory: the images are held as :class:`~det_al.pool.PoolImages` (numpy arrays and one packed
byte buffer) rather than a list of dicts. Pools of millions of entries stay small, and worker
processes do not slowly copy the parent's memory by touching Python reference counts (the
copy-on-access growth that lists of Python objects cause with ``num_workers > 0``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from torch.utils.data import Dataset

from det_al.images import MAX_PIXELS, ImageReadError, read_image, to_tensor
from det_al.pool import PoolImages, as_pool_images

logger = logging.getLogger(__name__)


class PoolDataset(Dataset):
    """The images of a COCO pool, read one at a time from ``image_root / file_name``.

    Args:
        coco: :class:`~det_al.pool.PoolImages`, a COCO dict (only its ``images`` are used) or
            the list of image dicts itself; each needs ``id`` and ``file_name`` (an absolute
            ``file_name`` ignores the root).
        image_root: the folder ``file_name`` is relative to.
        max_pixels: images with more pixels are skipped (see :func:`det_al.images.read_image`).
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
