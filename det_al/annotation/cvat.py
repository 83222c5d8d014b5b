"""CVAT: selection -> "CVAT for images 1.1" XML or "COCO 1.0" JSON, and CVAT's frame names and RLE.

- :func:`selection_to_cvat_xml`: boxes (``xtl..ybr`` pixels), masks in CVAT's own RLE (run
  lengths over the mask's bounding box, row-major, starting with a background run) or polygons
  traced from masks, and the detector confidence as a ``score`` *text* attribute declared on every
  label (CVAT silently drops undeclared attributes, and number attributes are integers only).
- :func:`selection_to_cvat_coco`: the "COCO 1.0" alternative, category ids >= 1 (id 0 loses its
  label in CVAT), masks as COCO RLE.
- Image names are the frame names CVAT will store (:func:`frame_name`): CVAT matches annotations
  to frames by exact name and silently falls back to the frame *index* when no name matches, so
  the ``<image id>`` is the rank-order index too. Local uploads (cvat-cli, ``cvat_sdk``) store
  the file's base name; a share or cloud storage stores the path relative to its root.

CVAT's exports come back as COCO labels in :mod:`det_al.annotation.cvat_import`, by the same
frame names.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET

import numpy as np

from det_al.errors import InputError
from det_al.annotation.label_studio import mask_to_polygons
from det_al.data.segmentation import segmentation_to_mask

logger = logging.getLogger(__name__)

FRAME_NAME_MODES = ("basename", "path")
SHAPES = ("mask", "polygon", "box")


# --------------------------------------------------------------------------- names


def frame_name(file_name: str, mode: str = "basename") -> str:
    """The frame name CVAT stores for an image: its base name (local upload) or its path (share).

    >>> frame_name("sub/dir/a.jpg"), frame_name("sub/dir/a.jpg", "path")
    ('a.jpg', 'sub/dir/a.jpg')
    """
    if mode not in FRAME_NAME_MODES:
        raise ValueError(f"unknown frame name mode {mode!r}; valid: {', '.join(FRAME_NAME_MODES)}")
    path = file_name.replace("\\", "/")
    return path.rsplit("/", 1)[-1] if mode == "basename" else path.lstrip("/")


def frame_names(images: list[dict], mode: str = "basename") -> list[str]:
    """Frame names of ``images`` in order; two images with one name is an :class:`InputError`."""
    names = [frame_name(im["file_name"], mode) for im in images]
    seen: dict[str, str] = {}
    for im, name in zip(images, names):
        if name in seen:
            hint = " (use frame names 'path' and a share or cloud storage)" if mode == "basename" else ""
            raise InputError(f"images {seen[name]!r} and {im['file_name']!r} both become CVAT frame {name!r}{hint}")
        seen[name] = im["file_name"]
    return names


# --------------------------------------------------------------------------- mask RLE


def mask_to_cvat_rle(mask: np.ndarray) -> tuple[list[int], int, int, int, int]:
    """Boolean mask ``[H, W]`` -> ``(runs, left, top, width, height)`` in CVAT's mask encoding.

    ``runs`` alternate background/foreground over the mask's bounding box in row-major order,
    starting with background (0 when the first pixel is set); ``width``/``height`` are the box's.

    >>> mask_to_cvat_rle(np.array([[0, 0, 0], [0, 1, 1], [0, 1, 0]], bool))
    ([0, 3, 1], 1, 1, 2, 2)
    """
    mask = np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("empty mask")
    left, top, right, bottom = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    flat = mask[top : bottom + 1, left : right + 1].ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0] + runs
    return runs, left, top, right - left + 1, bottom - top + 1


def cvat_rle_to_mask(runs: list[int], left: int, top: int, width: int, height: int,
                     image_width: int, image_height: int) -> np.ndarray:
    """CVAT mask encoding -> boolean mask ``[image_height, image_width]`` (inverse of :func:`mask_to_cvat_rle`)."""
    runs = [int(r) for r in runs]
    if sum(runs) != width * height:
        raise ValueError(f"mask runs cover {sum(runs)} pixels, its box {width}x{height} has {width * height}")
    if left < 0 or top < 0 or left + width > image_width or top + height > image_height:
        raise ValueError(f"mask box {left},{top} {width}x{height} leaves the {image_width}x{image_height} image")
    values = (np.arange(len(runs)) % 2).astype(bool)
    box = np.repeat(values, runs).reshape(height, width)
    mask = np.zeros((image_height, image_width), dtype=bool)
    mask[top : top + height, left : left + width] = box
    return mask


# --------------------------------------------------------------------------- export


def _fmt(value: float) -> str:
    return f"{value:.2f}"


def _score_text(score: float) -> str:
    return f"{float(score):.4f}"


def selection_to_cvat_xml(
    selection: dict, names: list[str], shapes: str = "mask", task_name: str = "det_al selection",
    tolerance: float = 0.0,
) -> str:
    """"CVAT for images 1.1" XML of a selection; ``names[i]`` is the frame name of image ``i``.

    Annotations with a mask become ``shapes`` ("mask", "polygon": the largest outer contour, or
    "box"); the others become boxes. Every label declares the ``score`` text attribute.
    """
    if shapes not in SHAPES:
        raise ValueError(f"unknown shape kind {shapes!r}; valid: {', '.join(SHAPES)}")
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = task_name
    ET.SubElement(task, "size").text = str(len(selection["images"]))
    ET.SubElement(task, "mode").text = "annotation"
    ET.SubElement(task, "overlap").text = "0"
    labels = ET.SubElement(task, "labels")
    label_names = {}
    for c in selection.get("categories", []):
        label_names[c["id"]] = str(c["name"])
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = str(c["name"])
        ET.SubElement(label, "type").text = "any"
        attribute = ET.SubElement(ET.SubElement(label, "attributes"), "attribute")
        for key, text in (("name", "score"), ("mutable", "False"), ("input_type", "text"),
                          ("default_value", ""), ("values", "")):
            ET.SubElement(attribute, key).text = text

    by_image: dict = {}
    for ann in selection.get("annotations", []):
        by_image.setdefault(ann["image_id"], []).append(ann)
    for index, (image, name) in enumerate(zip(selection["images"], names)):
        width, height = int(image["width"]), int(image["height"])
        element = ET.SubElement(root, "image", id=str(index), name=name, width=str(width), height=str(height))
        for ann in by_image.get(image["id"], []):
            if ann["category_id"] not in label_names:
                raise InputError(
                    f"annotation {ann['id']} has category_id {ann['category_id']}, not among the categories")
            label = label_names[ann["category_id"]]
            shape = _annotation_to_shape(element, ann, label, width, height, shapes, tolerance)
            if shape is not None and "score" in ann:
                ET.SubElement(shape, "attribute", name="score").text = _score_text(ann["score"])
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _annotation_to_shape(parent, ann, label, width, height, shapes, tolerance):
    common = {"label": label, "source": "auto", "occluded": "0", "z_order": "0"}
    segmentation = ann.get("segmentation")
    if segmentation and shapes != "box":
        try:
            mask = segmentation_to_mask(segmentation, height, width)
        except ValueError as e:
            raise InputError(f"annotation {ann['id']}: {e}") from e
        if mask.any():
            if shapes == "mask":
                runs, left, top, w, h = mask_to_cvat_rle(mask)
                return ET.SubElement(parent, "mask", **common, rle=", ".join(map(str, runs)),
                                     left=str(left), top=str(top), width=str(w), height=str(h))
            polygons = mask_to_polygons(mask, tolerance)
            if polygons:
                points = ";".join(f"{_fmt(x)},{_fmt(y)}" for x, y in polygons[0].tolist())
                return ET.SubElement(parent, "polygon", **common, points=points)
    x, y, w, h = (float(v) for v in ann["bbox"])
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        logger.debug("annotation %s: empty box after clipping; no shape", ann["id"])
        return None
    return ET.SubElement(parent, "box", **common, xtl=_fmt(x1), ytl=_fmt(y1), xbr=_fmt(x2), ybr=_fmt(y2))


def cvat_labels_spec(categories: list[dict]) -> list[dict]:
    """The labels JSON for creating the CVAT task (``cvat-cli task create --labels``,
    ``cvat_sdk`` task spec): every label declares the ``score`` text attribute."""
    return [
        {"name": str(c["name"]), "type": "any", "attributes": [
            {"name": "score", "mutable": False, "input_type": "text", "default_value": "", "values": [""]}]}
        for c in categories
    ]


def selection_to_cvat_coco(selection: dict, names: list[str]) -> dict:
    """"COCO 1.0" JSON for CVAT: ``file_name`` = frame name, image ids 1..N in rank order,
    category ids kept when all >= 1 (else renumbered 1..K), the score as a COCO ``attributes`` entry,
    masks as RLE with ``iscrowd=1`` (as CVAT exports them; ``iscrowd=0`` would become polygons).
    """
    categories = selection.get("categories", [])
    if all(int(c["id"]) >= 1 for c in categories):
        category_map = {c["id"]: c["id"] for c in categories}
    else:
        logger.warning("category id 0 loses its label in CVAT: renumbering categories 1..%d", len(categories))
        category_map = {c["id"]: i for i, c in enumerate(categories, start=1)}
    image_map = {image["id"]: i for i, image in enumerate(selection["images"], start=1)}
    images = [
        {"id": image_map[im["id"]], "file_name": name, "width": int(im["width"]), "height": int(im["height"])}
        for im, name in zip(selection["images"], names)
    ]
    annotations = []
    for ann in selection.get("annotations", []):
        new = {
            "id": len(annotations) + 1,
            "image_id": image_map[ann["image_id"]],
            "category_id": category_map[ann["category_id"]],
            "bbox": [float(v) for v in ann["bbox"]],
            "area": float(ann.get("area", ann["bbox"][2] * ann["bbox"][3])),
            # CVAT's own COCO export marks masks (RLE) with iscrowd=1, and its importer (datumaro)
            # turns iscrowd=0 segmentations into polygons: keep masks masks
            "iscrowd": int(isinstance(ann.get("segmentation"), dict)),
            "segmentation": ann.get("segmentation") or [],
            "attributes": {"occluded": False},
        }
        if "score" in ann:
            new["attributes"]["score"] = _score_text(ann["score"])
        annotations.append(new)
    return {
        "info": {"description": "det_al selection for CVAT"},
        "licenses": [],
        "categories": [{"id": category_map[c["id"]], "name": c["name"], "supercategory": c.get("supercategory", "")}
                       for c in categories],
        "images": images,
        "annotations": annotations,
    }


__all__ = [
    "frame_name", "frame_names", "mask_to_cvat_rle", "cvat_rle_to_mask", "selection_to_cvat_xml", "cvat_labels_spec",
    "selection_to_cvat_coco", "FRAME_NAME_MODES", "SHAPES",
]
