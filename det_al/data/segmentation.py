"""COCO segmentations: masks to RLE and back, polygons and RLEs to masks, with validation.

Inside det_al a mask is a ``[H, W]`` boolean array (``[N, H, W]`` for several); COCO's RLE and
polygon forms only appear at the file boundary, through these functions. Encoding, decoding,
merging and polygon rasterisation are pycocotools' (:mod:`pycocotools.mask`). det_al adds the
checks that pycocotools leaves to its caller: a malformed or truncated RLE string, counts that
do not cover the image, non-finite polygon vertices, and vertices so far outside the image that
rasterising them would exhaust memory. Each is a ``ValueError`` with a one-line reason.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from torch import Tensor


def mask_to_rle(mask: Tensor | np.ndarray, threshold: float = 0.5) -> dict:
    """``[H, W]`` mask -> COCO RLE ``{"size": [H, W], "counts": str}`` (JSON-ready).

    Boolean and integer masks are taken as they are (non-zero = inside); float masks
    (probabilities) are binarised with ``> threshold``.
    """
    return masks_to_rles(_as_numpy(mask)[None], threshold)[0]


def masks_to_rles(masks: Tensor | np.ndarray, threshold: float = 0.5) -> list[dict]:
    """``[N, H, W]`` masks -> list of N COCO RLEs with ``counts`` as str (see :func:`mask_to_rle`)."""
    array = _as_numpy(masks)
    if array.ndim != 3:
        raise ValueError(f"expected masks of shape (N, H, W), got {tuple(array.shape)}")
    if array.dtype.kind == "f":
        binary = array > threshold
    else:
        binary = array != 0
    if binary.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def rle_to_mask(rle: dict) -> np.ndarray:
    """COCO RLE (``counts`` as str, bytes, or an uncompressed list) -> ``[H, W]`` bool array.

    Raises:
        ValueError: a malformed RLE (bad size, bad characters, counts not covering H * W).
    """
    return mask_utils.decode(_compressed_rle(rle)).astype(bool)


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, RLE, uncompressed RLE) -> ``[H, W]`` bool array.

    Polygons follow pycocotools' rasterisation (as COCOeval sees them). A flat list of numbers
    is taken as one polygon; degenerate polygons (fewer than 3 points) cover no pixels; an
    empty list gives an empty mask; vertices far outside the image are clipped to it first.

    Raises:
        ValueError: non-finite or non-numeric coordinates, a malformed RLE, an RLE whose size
            is not ``[H, W]``, or a segmentation of another form.
    """
    if isinstance(segmentation, list):
        if segmentation and all(_is_number(v) for v in segmentation):
            segmentation = [segmentation]  # a single flat polygon
        polygons = []
        for polygon in segmentation:
            if not isinstance(polygon, (list, tuple)) or not all(_is_number(v) for v in polygon):
                raise ValueError("polygon coordinates must be lists of numbers")
            if not all(math.isfinite(v) for v in polygon):
                raise ValueError("polygon coordinates must be finite")
            if len(polygon) >= 6:
                clipped = _clip_polygon([float(v) for v in polygon], width, height)
                if len(clipped) >= 6:
                    polygons.append(clipped)
        if not polygons:
            return np.zeros((height, width), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        return mask_utils.decode(rle).astype(bool)
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = segmentation["size"]
        if not (isinstance(size, (list, tuple)) and [_as_int(v) for v in size] == [height, width]):
            raise ValueError(f"RLE of size {size!r} for an image of size {[height, width]}")
        return rle_to_mask(segmentation)
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_int(value: Any) -> int | None:
    if _is_int(value) or (isinstance(value, float) and value.is_integer()):
        return int(value)
    return None


def _clip_polygon(flat: list[float], width: int, height: int) -> list[float]:
    """Clip a polygon ``[x0, y0, x1, y1, ...]`` that reaches far outside the image.

    pycocotools walks every edge in fifth-of-a-pixel steps, so a vertex at 1e9 would exhaust
    memory. Polygons within a margin of one image size around the image are left exactly as
    they are (pycocotools' own pixels); others are clipped (Sutherland-Hodgman) to that box,
    which may move a pixel or two on the image border but keeps the memory bounded.
    """
    points = list(zip(flat[0::2], flat[1::2]))
    margin = float(max(width, height)) + 16.0
    lo_x, lo_y, hi_x, hi_y = -margin, -margin, width + margin, height + margin
    if all(lo_x <= x <= hi_x and lo_y <= y <= hi_y for x, y in points):
        return flat
    edges = ((0, lo_x, True), (0, hi_x, False), (1, lo_y, True), (1, hi_y, False))
    for axis, bound, keep_above in edges:
        inside = (lambda p: p[axis] >= bound) if keep_above else (lambda p: p[axis] <= bound)
        clipped = []
        for i, current in enumerate(points):
            previous = points[i - 1]
            if inside(current) != inside(previous):
                t = (bound - previous[axis]) / (current[axis] - previous[axis])
                clipped.append(tuple(previous[a] + t * (current[a] - previous[a]) for a in (0, 1)))
            if inside(current):
                clipped.append(current)
        points = clipped
        if not points:
            return []
    return [v for p in points for v in p]


def _compressed_rle(rle: Any) -> dict:
    """A validated RLE with ``counts`` as bytes, as pycocotools' decoder expects."""
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise ValueError("expected an RLE with 'size' and 'counts'")
    size = rle["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        raise ValueError(f"RLE size must be [height, width], got {size!r}")
    h, w = (_as_int(v) for v in size)
    if h is None or w is None or h < 0 or w < 0:
        raise ValueError(f"RLE size must be [height, width], got {size!r}")
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts):
            raise ValueError("uncompressed RLE counts must be non-negative integers")
        if sum(counts) != h * w:
            raise ValueError(f"RLE counts cover {sum(counts)} pixels, expected {h}x{w} = {h * w}")
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("RLE counts string has non-ASCII characters") from None
    if not isinstance(counts, bytes):
        raise ValueError(f"RLE counts must be a string or a list, got {type(counts).__name__}")
    covered = _compressed_counts_total(counts)
    if covered != h * w:
        raise ValueError(f"RLE counts cover {covered} pixels, expected {h}x{w} = {h * w}")
    return {"size": [h, w], "counts": counts}


def _compressed_counts_total(counts: bytes) -> int:
    """Pixels covered by a compressed COCO RLE string (pycocotools' ``rleFrString``, checked)."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise ValueError("RLE counts string is truncated")
            c = counts[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"RLE counts string has an invalid character {chr(counts[p])!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            raise ValueError("RLE counts string has a negative run")
        runs.append(x)
    return sum(runs)


def _as_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


__all__ = ["mask_to_rle", "masks_to_rles", "rle_to_mask", "segmentation_to_mask"]
