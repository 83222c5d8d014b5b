"""``PoolDataset``: pool images for scoring, read lazily, never raising on a bad file.

Each item is ``{"image_id", "file_name", "image"}`` with ``image`` a ``[3, H, W]`` float tensor
in ``[0, 1]`` (EXIF applied, see :mod:`det_al.images`), or ``{"image_id", "file_name",
"error"}`` with a one-line reason when the file cannot be read, so that a ``DataLoader`` with
worker processes goes on past it and the caller lists the image as skipped.

Memory: only image ids and file names are kept, packed in numpy arrays (one int64 array, one
byte buffer and its offsets) rather than a list of dicts. Pools of millions of entries stay
small, and worker processes do not slowly copy the parent's memory by touching Python
reference counts (the copy-on-access growth that lists of Python objects cause with
``num_workers > 0``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch.utils.data import Dataset

from det_al.images import MAX_PIXELS, ImageReadError, read_image, to_tensor

logger = logging.getLogger(__name__)


class PoolDataset(Dataset):
    """The images of a COCO pool, read one at a time from ``image_root / file_name``.

    Args:
        coco: a COCO dict (only its ``images`` are used) or the list of image dicts itself;
            each needs ``id`` and ``file_name`` (an absolute ``file_name`` ignores the root).
        image_root: the folder ``file_name`` is relative to.
        max_pixels: images with more pixels are skipped (see :func:`det_al.images.read_image`).
    """

    def __init__(
        self,
        coco: dict | Sequence[dict],
        image_root: str | os.PathLike,
        max_pixels: int = MAX_PIXELS,
    ):
        images = coco["images"] if isinstance(coco, dict) else coco
        self.image_root = Path(image_root)
        self.max_pixels = max_pixels
        self._ids = np.fromiter((int(im["id"]) for im in images), dtype=np.int64, count=len(images))
        encoded = [str(im["file_name"]).encode("utf-8") for im in images]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._names = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ids)

    def image_id(self, index: int) -> int:
        return int(self._ids[index])

    def file_name(self, index: int) -> str:
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._names[start:end].tobytes().decode("utf-8")

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
