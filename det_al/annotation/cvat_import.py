"""CVAT exports -> COCO labels: frames matched back to the selection's images by the frame
names of :mod:`det_al.annotation.cvat` (the export), labels to the user's category ids by name;
boxes, polygons and masks become COCO annotations; frames without shapes are skipped and reported
(:func:`cvat_xml_to_coco`, :func:`cvat_coco_to_coco`, :func:`cvat_export_to_coco` for a file or
the zip CVAT downloads).

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

from det_al.annotation.cvat import cvat_rle_to_mask, frame_name, frame_names
from det_al.annotation.merge import ImportReport, category_ids_by_name
from det_al.data.files import read_json
from det_al.data.segmentation import mask_to_rle, segmentation_to_mask
from det_al.errors import InputError

logger = logging.getLogger(__name__)

#: A shape whose box corners all lie within this many pixels of a pre-annotation's (same label)
#: is that pre-annotation unchanged: the export rounds to 0.01 px and a traced polygon's box is up
#: to 1 px smaller than its mask's.
UNCHANGED_TOLERANCE = 1.5
#: Shape sources that CVAT gives to what the model or a file put there; any other source
#: (``manual``, ``semi-auto``, ``consensus``) means a person drew or edited the shape.
MACHINE_SOURCES = ("auto", "file", "")
UNTOUCHED = "untouched pre-annotations"


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
        if not _keep_frame(report, image, anns, name, keep_empty, lambda: reviewed(image, anns, person_source)):
            continue
        seen.add(image["id"])
        images.append(image)
        annotations.append(anns)
    _note_untouched(report)
    return report.finish(images, selection.get("categories", []), annotations)


def _keep_frame(report, image: dict, anns: list, frame: str, keep_empty: bool, reviewed) -> bool:
    """Whether a frame's shapes become labels; if not, the report says why: no shapes (unless
    ``keep_empty``), or shapes that are the model's pre-annotations untouched (``reviewed()``
    false)."""
    why = "no shapes" if not anns and not keep_empty else UNTOUCHED if anns and not reviewed() else None
    if why is not None:
        report.skip(why, file_name=image["file_name"], image_id=image["id"], frame=frame)
    return why is None


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
        if not _keep_frame(report, image, anns, frame["file_name"], keep_empty, lambda: reviewed(image, anns, False)):
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
    "cvat_xml_to_coco", "cvat_coco_to_coco", "cvat_export_to_coco", "pre_annotation_boxes", "unchanged",
    "UNCHANGED_TOLERANCE",
]
