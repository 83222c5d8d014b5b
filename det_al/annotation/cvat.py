"""CVAT: selection -> "CVAT for images 1.1" XML or "COCO 1.0" JSON, and CVAT exports -> COCO labels.

Export:

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

Import (:func:`cvat_xml_to_coco`, :func:`cvat_coco_to_coco`): frames matched back to the
selection's images by the same frame names, labels to the user's category ids by name; boxes,
polygons and masks become COCO annotations; frames without shapes are skipped and reported.

A model's guess never becomes a label without a person. CVAT exports every frame of a task,
finished or not, and a frame nobody opened still holds the pre-annotations det_al uploaded. A
frame is imported only when a person worked on it: one of its shapes has a person's ``source``
(``manual``, ``semi-auto``: the XML says so, the COCO export does not), or its shapes differ from
the selection's pre-annotations (a shape added, deleted, relabelled or moved by more than
:data:`UNCHANGED_TOLERANCE` pixels), or the user names it finished (``finished``: frame names, or
``"all"`` when every frame was reviewed, e.g. the job is *completed*: accepting a model's boxes
unchanged is then a person's decision). The other frames are skipped as "untouched
pre-annotations" and counted in the report.
"""

from __future__ import annotations

import json
import logging
import math
import os
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from det_al.errors import InputError
from det_al.data.files import read_json
from det_al.annotation.label_studio import mask_to_polygons
from det_al.annotation.merge import ImportReport, category_ids_by_name
from det_al.data.segmentation import mask_to_rle, segmentation_to_mask

logger = logging.getLogger(__name__)

FRAME_NAME_MODES = ("basename", "path")
SHAPES = ("mask", "polygon", "box")
#: A shape whose box corners all lie within this many pixels of a pre-annotation's (same label)
#: is that pre-annotation unchanged: the export rounds to 0.01 px and a traced polygon's box is up
#: to 1 px smaller than its mask's.
UNCHANGED_TOLERANCE = 1.5
#: Shape sources that CVAT gives to what the model or a file put there; any other source
#: (``manual``, ``semi-auto``, ``consensus``) means a person drew or edited the shape.
MACHINE_SOURCES = ("auto", "file", "")
UNTOUCHED = "untouched pre-annotations"


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


# --------------------------------------------------------------------------- import


class _FrameMatcher:
    """Finds the selection image of a CVAT frame by name; checks sizes."""

    def __init__(self, selection: dict, mode: str, path):
        self.path = path
        self.by_name = dict(zip(frame_names(selection["images"], mode), selection["images"]))

    def image(self, name: str, width, height) -> dict:
        image = self.by_name.get(frame_name(name, "path")) or self.by_name.get(frame_name(name, "basename"))
        if image is None:
            raise InputError(f"frame {name!r} is not an image of the selection", self.path)
        if width is not None and (int(width), int(height)) != (int(image["width"]), int(image["height"])):
            raise InputError(
                f"frame {name!r} is {width}x{height} in CVAT but {image['width']}x{image['height']} in the selection",
                self.path,
            )
        return image


def _polygons_annotation(polygons: list[list[float]], width: int, height: int) -> dict:
    """COCO annotation fields for polygons (flat ``[x0, y0, x1, y1, ...]`` pixel lists)."""
    xs = [v for p in polygons for v in p[0::2]]
    ys = [v for p in polygons for v in p[1::2]]
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return {
        "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
        "area": float(mask_utils.area(rle)),
        "iscrowd": 0,
        "segmentation": polygons,
    }


def _mask_annotation(mask: np.ndarray) -> dict:
    rle = mask_to_rle(mask)
    return {"bbox": mask_utils.toBbox(rle).tolist(), "area": float(mask_utils.area(rle)), "iscrowd": 0,
            "segmentation": rle}


def _shape_to_annotation(element: ET.Element, width: int, height: int) -> tuple[dict | None, str]:
    tag = element.tag
    if tag == "box":
        x1, y1, x2, y2 = (float(element.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
        rotation = float(element.get("rotation", 0) or 0)
        if rotation:  # CVAT rotates about the centre
            cx, cy, a = (x1 + x2) / 2, (y1 + y2) / 2, math.radians(rotation)
            corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
            xs = [cx + (x - cx) * math.cos(a) - (y - cy) * math.sin(a) for x, y in corners]
            ys = [cy + (x - cx) * math.sin(a) + (y - cy) * math.cos(a) for x, y in corners]
            x1, y1 = max(min(xs), 0.0), max(min(ys), 0.0)
            x2, y2 = min(max(xs), float(width)), min(max(ys), float(height))
        return {"bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}, ""
    if tag == "polygon":
        flat = [float(v) for pair in element.get("points", "").split(";") if pair for v in pair.split(",")]
        if len(flat) < 6:
            return None, "polygon with fewer than 3 points"
        return _polygons_annotation([flat], width, height), ""
    if tag == "mask":
        runs = [int(r) for r in element.get("rle", "").split(",") if r.strip()]
        left, top, w, h = (int(float(element.get(k))) for k in ("left", "top", "width", "height"))
        mask = cvat_rle_to_mask(runs, left, top, w, h, width, height)
        if not mask.any():
            return None, "empty mask"
        return _mask_annotation(mask), ""
    return None, tag


def _xyxy(bbox: list[float], width: int, height: int) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [min(max(x, 0.0), width), min(max(y, 0.0), height), min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)]


def pre_annotation_boxes(selection: dict) -> dict:
    """``{image_id: [(category_id, [xyxy, ...]), ...]}``: the boxes each exported pre-annotation can
    come back as (its box clipped to the image, and its mask's box when it has a mask); annotations
    the export drops (empty after clipping) are left out."""
    sizes = {im["id"]: (int(im["width"]), int(im["height"])) for im in selection["images"]}
    boxes: dict = {}
    for ann in selection.get("annotations", []):
        if ann["image_id"] not in sizes:
            continue
        width, height = sizes[ann["image_id"]]
        box = _xyxy(ann["bbox"], width, height)
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        candidates = [box]
        if ann.get("segmentation"):
            try:
                mask = segmentation_to_mask(ann["segmentation"], height, width)
            except ValueError:
                mask = None
            if mask is not None and mask.any():
                candidates.append(_xyxy(mask_utils.toBbox(mask_to_rle(mask)).tolist(), width, height))
        boxes.setdefault(ann["image_id"], []).append((ann["category_id"], candidates))
    return boxes


def unchanged(annotations: list[dict], pre_annotations: list[tuple[int, list[list[float]]]],
              tolerance: float = UNCHANGED_TOLERANCE) -> bool:
    """True when a frame's imported ``annotations`` are its ``pre_annotations`` one to one: same
    count, and a pairing (scipy's assignment) where each pair has the same category and box corners
    within ``tolerance`` pixels. A frame with neither is not "unchanged" (it has nothing to keep).

    >>> pre = [(1, [[0.0, 0.0, 10.0, 10.0]])]
    >>> unchanged([{"category_id": 1, "bbox": [0.5, 0.0, 10.0, 10.0]}], pre)
    True
    >>> unchanged([{"category_id": 1, "bbox": [3.0, 0.0, 10.0, 10.0]}], pre)  # moved 3 px
    False
    >>> unchanged([{"category_id": 2, "bbox": [0.0, 0.0, 10.0, 10.0]}], pre)  # relabelled
    False
    """
    if len(annotations) != len(pre_annotations) or not annotations:
        return False
    cost = np.full((len(annotations), len(pre_annotations)), np.inf)
    for i, ann in enumerate(annotations):
        x, y, w, h = (float(v) for v in ann["bbox"])
        mine = np.array([x, y, x + w, y + h])
        for j, (category_id, candidates) in enumerate(pre_annotations):
            if category_id == ann["category_id"]:  # the largest corner offset to the nearest candidate box
                cost[i, j] = float(np.abs(np.asarray(candidates) - mine).max(axis=1).min())
    finite = np.where(np.isfinite(cost), cost, 1e9)
    rows, cols = linear_sum_assignment(finite)
    return bool(np.all(finite[rows, cols] <= tolerance))


class _Reviewed:
    """Decides whether a frame was worked on by a person (see the module docstring)."""

    def __init__(self, selection: dict, finished, matcher: "_FrameMatcher", path):
        self.pre = pre_annotation_boxes(selection)
        self.all = finished == "all"
        self.names: set = set()
        if finished is not None and not self.all:
            for name in finished:
                try:
                    self.names.add(matcher.image(str(name), None, None)["id"])
                except InputError as e:
                    raise InputError(f"finished frame {name!r} is not an image of the selection", path) from e

    def __call__(self, image: dict, annotations: list[dict], person_source: bool) -> bool:
        if self.all or person_source or image["id"] in self.names:
            return True
        return not unchanged(annotations, self.pre.get(image["id"], []))


def _note_untouched(report: ImportReport) -> None:
    n = sum(1 for s in report.skipped if s["reason"] == UNTOUCHED)
    if n:
        report.notes.append(
            f"{n} frame(s) hold only the model's pre-annotations, unchanged, and were not imported: nobody "
            "has worked on them. Name the frames a person finished (--finished FILE, one frame name a "
            "line), or --all-finished when every frame was reviewed and accepted as it is.")


def cvat_xml_to_coco(
    xml_text: str | bytes, selection: dict, frame_name_mode: str = "basename", keep_empty: bool = False,
    path: str | os.PathLike | None = None, finished=None,
) -> tuple[dict, ImportReport]:
    """"CVAT for images 1.1" XML (a task or job export) -> (COCO labels file, report).

    ``finished``: frame names a person finished, or ``"all"``; frames with only unchanged
    pre-annotations are skipped otherwise (see the module docstring)."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as e:
        raise InputError(f"not valid XML: {e}", path) from e
    if root.tag != "annotations":
        raise InputError(f"expected a CVAT for images XML (<annotations>), got <{root.tag}>", path)
    if root.find("track") is not None:
        raise InputError("this is a CVAT for video export (tracks): export 'CVAT for images 1.1'", path)
    matcher = _FrameMatcher(selection, frame_name_mode, path)
    reviewed = _Reviewed(selection, finished, matcher, path)
    category_ids = category_ids_by_name(selection.get("categories", []))
    frames = root.findall("image")
    report = ImportReport(n_items=len(frames))
    images, annotations, seen = [], [], set()
    for frame in frames:
        name = frame.get("name", "")
        image = matcher.image(name, frame.get("width"), frame.get("height"))
        if image["id"] in seen:
            raise InputError(f"frame {name!r} appears twice", path)
        width, height = int(image["width"]), int(image["height"])
        anns, person_source = [], False
        for element in frame:
            if element.tag in ("tag", "attribute"):
                report.ignore(element.tag)
                continue
            person_source |= element.get("source", "") not in MACHINE_SOURCES
            label = element.get("label")
            if label not in category_ids:
                raise InputError(f"frame {name!r}: label {label!r} is not one of the categories "
                                 f"({', '.join(sorted(category_ids))})", path)
            try:
                ann, why = _shape_to_annotation(element, width, height)
            except (ValueError, TypeError) as e:
                raise InputError(f"frame {name!r}: bad <{element.tag}>: {e}", path) from e
            if ann is None:
                report.ignore(why)
            else:
                anns.append({"category_id": category_ids[label], **ann})
        if not anns and not keep_empty:
            report.skip("no shapes", file_name=image["file_name"], image_id=image["id"], frame=name)
            continue
        if anns and not reviewed(image, anns, person_source):
            report.skip(UNTOUCHED, file_name=image["file_name"], image_id=image["id"], frame=name)
            continue
        seen.add(image["id"])
        images.append(image)
        annotations.append(anns)
    _note_untouched(report)
    return report.finish(images, selection.get("categories", []), annotations)


def cvat_coco_to_coco(
    data: dict, selection: dict, frame_name_mode: str = "basename", keep_empty: bool = False,
    path: str | os.PathLike | None = None, finished=None,
) -> tuple[dict, ImportReport]:
    """CVAT's "COCO 1.0" export (images renumbered, categories renumbered) -> (COCO labels file, report).

    ``finished`` as for :func:`cvat_xml_to_coco`; this format carries no shape source, so only
    changed shapes or ``finished`` tell a person's frame."""
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise InputError("expected a COCO JSON object with 'images' and 'annotations'", path)
    matcher = _FrameMatcher(selection, frame_name_mode, path)
    reviewed = _Reviewed(selection, finished, matcher, path)
    category_ids = category_ids_by_name(selection.get("categories", []))
    their_names = {c["id"]: c["name"] for c in data.get("categories", [])}
    by_image: dict = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    report = ImportReport(n_items=len(data["images"]))
    images, annotations, seen = [], [], set()
    for frame in data["images"]:
        image = matcher.image(frame["file_name"], frame.get("width"), frame.get("height"))
        if image["id"] in seen:
            raise InputError(f"frame {frame['file_name']!r} appears twice", path)
        width, height = int(image["width"]), int(image["height"])
        anns = []
        for ann in by_image.get(frame["id"], []):
            name = their_names.get(ann.get("category_id"))
            if name not in category_ids:
                raise InputError(f"annotation {ann.get('id')}: category {name or ann.get('category_id')!r} "
                                 f"is not one of the categories ({', '.join(sorted(category_ids))})", path)
            segmentation = ann.get("segmentation")
            if segmentation:
                try:
                    if isinstance(segmentation, dict):
                        new = _mask_annotation(segmentation_to_mask(segmentation, height, width))
                    else:
                        polygons = [[float(v) for v in p] for p in segmentation if len(p) >= 6]
                        new = _polygons_annotation(polygons, width, height)
                except (ValueError, TypeError, IndexError) as e:
                    raise InputError(f"annotation {ann.get('id')}: bad segmentation: {e}", path) from e
            else:
                x, y, w, h = (float(v) for v in ann["bbox"])
                new = {"bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
            if new["bbox"][2] <= 0 or new["bbox"][3] <= 0:
                report.ignore("empty shape")
                continue
            anns.append({"category_id": category_ids[name], **new})
        if not anns and not keep_empty:
            report.skip("no shapes", file_name=image["file_name"], image_id=image["id"], frame=frame["file_name"])
            continue
        if anns and not reviewed(image, anns, False):
            report.skip(UNTOUCHED, file_name=image["file_name"], image_id=image["id"], frame=frame["file_name"])
            continue
        seen.add(image["id"])
        images.append(image)
        annotations.append(anns)
    _note_untouched(report)
    return report.finish(images, selection.get("categories", []), annotations)


def cvat_export_to_coco(
    path: str | os.PathLike, selection: dict, frame_name_mode: str = "basename", keep_empty: bool = False,
    finished=None,
) -> tuple[dict, ImportReport]:
    """Read a CVAT export: ``annotations.xml`` (CVAT for images 1.1), a COCO JSON, or the zip CVAT
    downloads holding either one -> (COCO labels file, report). ``finished``: frame names a person
    finished, or ``"all"`` (see the module docstring)."""
    path = Path(path)
    if path.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
                xmls = [n for n in names if n.lower().endswith(".xml")]
                jsons = [n for n in names if n.lower().endswith(".json")]
                if len(xmls) + len(jsons) != 1:
                    raise InputError(f"expected one annotations .xml or one COCO .json in the zip, found "
                                     f"{', '.join(xmls + jsons) or 'none'}", path)
                content = archive.read((xmls + jsons)[0])
        except (zipfile.BadZipFile, OSError) as e:
            raise InputError(f"cannot read the zip: {e}", path) from e
        if xmls:
            return cvat_xml_to_coco(content, selection, frame_name_mode, keep_empty, path, finished)
        try:
            data = json.loads(content)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{jsons[0]} is not valid JSON: {e}", path) from e
        return cvat_coco_to_coco(data, selection, frame_name_mode, keep_empty, path, finished)
    if path.suffix.lower() == ".xml":
        try:
            content = path.read_bytes()
        except OSError as e:
            raise InputError(f"cannot read: {e.strerror}", path) from e
        return cvat_xml_to_coco(content, selection, frame_name_mode, keep_empty, path, finished)
    return cvat_coco_to_coco(read_json(path), selection, frame_name_mode, keep_empty, path, finished)


__all__ = [
    "frame_name", "frame_names", "mask_to_cvat_rle", "cvat_rle_to_mask", "selection_to_cvat_xml", "cvat_labels_spec",
    "selection_to_cvat_coco", "cvat_xml_to_coco", "cvat_coco_to_coco", "cvat_export_to_coco",
    "pre_annotation_boxes", "unchanged", "UNCHANGED_TOLERANCE",
]
