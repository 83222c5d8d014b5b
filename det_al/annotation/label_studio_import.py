"""Label Studio's ``JSON`` export -> COCO labels (:func:`tasks_to_coco`).

The JSON export, not Label Studio's COCO export, which renumbers images and drops scores: each
task's latest non-cancelled annotation becomes COCO annotations in pixels with the user's image
ids (from ``data``, where :mod:`det_al.annotation.label_studio` put them) and category ids (by
name). Rectangles, polygons and brush masks are read; tasks without annotation, cancelled, or
with an empty result are skipped and reported.
"""

from __future__ import annotations

import math
import os

import numpy as np
from pycocotools import mask as mask_utils

from det_al.annotation.merge import ImportReport, category_ids_by_name
from det_al.data.segmentation import mask_to_rle
from det_al.errors import InputError

#: Decimals kept when turning percent back into pixels (removes float noise like 199.999998).
PIXEL_DECIMALS = 4


class _BitReader:
    def __init__(self, data: bytes):
        self.bits = np.unpackbits(np.frombuffer(bytes(data), dtype=np.uint8))
        self.i = 0

    def read(self, n: int) -> int:
        chunk = self.bits[self.i : self.i + n]
        self.i += n
        if len(chunk) < n:
            raise ValueError("brush RLE is truncated")
        value = 0
        for b in chunk.tolist():
            value = (value << 1) | b
        return value


def brush_rle_to_mask(rle: list[int], width: int, height: int) -> np.ndarray:
    """Decode Label Studio's brush RLE (bit-packed RGBA image) into a boolean mask ``[H, W]``.

    The same algorithm as ``label_studio_sdk.converter.brush.decode_rle``; the mask is the
    alpha channel being non-zero.
    """
    reader = _BitReader(bytes(rle))
    num = reader.read(32)
    word_size = reader.read(5) + 1
    rle_sizes = [reader.read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint8)
    i = 0
    while i < num:
        repeated = reader.read(1)
        j = i + 1 + reader.read(rle_sizes[reader.read(2)])
        if repeated:
            out[i:j] = reader.read(word_size)
            i = j
        else:
            while i < j:
                out[i] = reader.read(word_size)
                i += 1
    if num != width * height * 4:
        raise ValueError(f"brush RLE holds {num} values, expected {width}x{height}x4")
    return out.reshape(height, width, 4)[:, :, 3] > 0


def _rotated_box(x: float, y: float, w: float, h: float, degrees: float) -> tuple[float, float, float, float]:
    """Axis-aligned ``(x1, y1, x2, y2)`` of a box rotated clockwise by ``degrees`` about its top-left corner."""
    a = math.radians(degrees)
    corners = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]
    xs = [x + dx * math.cos(a) - dy * math.sin(a) for dx, dy in corners]
    ys = [y + dx * math.sin(a) + dy * math.cos(a) for dx, dy in corners]
    return min(xs), min(ys), max(xs), max(ys)


def _polygon_annotation(flat: list[float], width: int, height: int) -> dict:
    xs, ys = flat[0::2], flat[1::2]
    x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
    rle = mask_utils.frPyObjects([flat], height, width)
    return {
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": float(mask_utils.area(mask_utils.merge(rle))),
        "iscrowd": 0,
        "segmentation": [flat],
    }


class BadRegion(ValueError):
    """A region whose coordinates cannot be a label (not numbers, not finite, negative or zero size).

    Its task is skipped whole: importing the task without the region would make its object
    background in the training set."""


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _broken_geometry(kind: str, value: dict) -> str:
    """Why a region's coordinates cannot be a label, or ``""``."""
    if kind == "rectanglelabels":
        numbers = [value.get(k) for k in ("x", "y", "width", "height")] + [value.get("rotation", 0) or 0]
        if not all(_number(v) for v in numbers):
            return "rectangle coordinates missing or not finite numbers"
        if value["width"] <= 0 or value["height"] <= 0:
            return "rectangle of negative or zero size"
    elif kind == "polygonlabels":
        points = value.get("points") or []
        if not all(isinstance(p, (list, tuple)) and len(p) == 2 and all(_number(v) for v in p) for p in points):
            return "polygon points missing or not finite numbers"
    return ""


def region_to_annotation(
    region: dict, width: int, height: int, category_ids: dict[str, int]
) -> tuple[dict | None, str]:
    """One Label Studio result region -> ``(COCO annotation without ids, "")`` or ``(None, why)``.

    Coordinates are converted with the image size from the selection; a region whose
    ``original_width``/``original_height`` differ is an error (the image was resized or
    EXIF-rotated differently). Coordinates that are not finite numbers, or a rectangle of
    negative or zero size, raise :class:`BadRegion` (the caller skips the task).
    """
    kind = region.get("type")
    value = region.get("value", {})
    if kind not in ("rectanglelabels", "polygonlabels", "brushlabels"):
        return None, str(kind)
    labels = value.get(kind) or []
    if not labels:
        return None, f"{kind} without label"
    if labels[0] not in category_ids:
        raise InputError(f"label {labels[0]!r} is not one of the categories ({', '.join(sorted(category_ids))})")
    size = (region.get("original_width", width), region.get("original_height", height))
    if size != (width, height):
        raise InputError(f"region on a {size[0]}x{size[1]} image, but the selection says {width}x{height}")
    ann: dict = {"category_id": category_ids[labels[0]]}
    sx, sy = width / 100.0, height / 100.0
    broken = _broken_geometry(kind, value)
    if broken:
        raise BadRegion(broken)
    if kind == "rectanglelabels":
        x, y, w, h = value["x"] * sx, value["y"] * sy, value["width"] * sx, value["height"] * sy
        x1, y1, x2, y2 = _rotated_box(x, y, w, h, float(value.get("rotation", 0) or 0))
        x1, y1 = max(x1, 0.0), max(y1, 0.0)
        x2, y2 = min(x2, float(width)), min(y2, float(height))
        box = [round(v, PIXEL_DECIMALS) for v in (x1, y1, x2 - x1, y2 - y1)]
        ann.update(bbox=box, area=round(box[2] * box[3], PIXEL_DECIMALS), iscrowd=0)
    elif kind == "polygonlabels":
        points = value.get("points") or []
        if len(points) < 3:
            return None, "polygon with fewer than 3 points"
        flat = [round(v, PIXEL_DECIMALS) for x, y in points for v in (x * sx, y * sy)]
        ann.update(_polygon_annotation(flat, width, height))
    else:
        mask = brush_rle_to_mask(value.get("rle") or [], width, height)
        if not mask.any():
            return None, "empty brush mask"
        rle = mask_to_rle(mask)
        x, y, w, h = mask_utils.toBbox(rle).tolist()
        ann.update(bbox=[x, y, w, h], area=float(mask_utils.area(rle)), iscrowd=0, segmentation=rle)
    if ann["bbox"][2] <= 0 or ann["bbox"][3] <= 0:
        return None, "empty box"
    return ann, ""


def _latest_annotation(task: dict) -> tuple[dict | None, str]:
    annotations = task.get("annotations") or []
    if not annotations:
        return None, "no annotation"
    done = [a for a in annotations if not a.get("was_cancelled")]
    if not done:
        return None, "cancelled"
    return max(done, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0)), ""


def tasks_to_coco(
    tasks: list[dict], selection: dict, keep_empty: bool = False, path: str | os.PathLike | None = None
) -> tuple[dict, ImportReport]:
    """Label Studio ``JSON`` export -> (COCO labels file, report).

    Images are found in ``selection`` (any COCO file holding them) by ``data.image_id``, or by
    ``data.file_name`` when the task has no id. Tasks without annotation, cancelled, or whose
    annotation has no region are skipped (``keep_empty`` keeps the last kind, as images with no
    objects). ``path`` names the export file in errors.
    """
    if not isinstance(tasks, list):
        raise InputError("expected a JSON list of tasks (Label Studio's JSON export)", path)
    category_ids = category_ids_by_name(selection.get("categories", []))
    images_by_id = {im["id"]: im for im in selection.get("images", [])}
    images_by_name = {im["file_name"]: im for im in selection.get("images", [])}
    report = ImportReport(n_items=len(tasks))
    images, annotations, seen = [], [], set()
    for task in tasks:
        data = task.get("data") or {}
        where = {"task": task.get("id"), "image_id": data.get("image_id"), "file_name": data.get("file_name")}
        if "image_id" in data:
            image = images_by_id.get(data["image_id"])
        else:
            image = images_by_name.get(data.get("file_name"))
        if image is None:
            key = data.get("image_id", data.get("file_name"))
            raise InputError(f"task {task.get('id')}: image {key!r} is not in the selection", path)
        if image["id"] in seen:
            raise InputError(f"task {task.get('id')}: image {image['id']} has two tasks", path)
        annotation, why = _latest_annotation(task)
        if annotation is None:
            report.skip(why, **where)
            continue
        anns = []
        try:
            for region in annotation.get("result") or []:
                ann, why = region_to_annotation(region, int(image["width"]), int(image["height"]), category_ids)
                if ann is None:
                    report.ignore(why)
                else:
                    anns.append(ann)
        except InputError as e:
            raise InputError(f"task {task.get('id')} (image {image['file_name']!r}): {e}", path) from e
        except BadRegion as e:
            report.skip(f"bad region: {e}", **where)
            continue
        if not anns and not keep_empty:
            report.skip("empty result", **where)
            continue
        seen.add(image["id"])
        images.append(image)
        annotations.append(anns)
    return report.finish(images, selection.get("categories", []), annotations)
