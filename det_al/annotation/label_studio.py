"""Label Studio: selection -> tasks JSON + labeling config, and image URLs Label Studio can serve.

Export (:func:`selection_to_tasks`, :func:`labeling_config`):

- one task per image, in rank order (Label Studio's default sequential sampling serves import
  order); ``data`` carries the image URL and det_al's own ``image_id``, ``file_name``, ``rank``
  and ``informativeness`` (Label Studio keeps extra ``data`` keys untouched in its exports);
- one prediction per task with ``score = 1 - informativeness`` (uncertainty sampling serves the
  lowest score first, i.e. the most informative image) and the model version; each region keeps
  its detector confidence in its own ``score``;
- boxes become ``rectanglelabels`` regions in percent of the original (EXIF-transposed) image;
  masks become ``polygonlabels`` regions traced with OpenCV ``findContours`` (the largest outer
  contour: Label Studio has no multi-part polygon). Coordinates are validated, including
  ``x + width <= 100``, which Label Studio itself does not check.

Label Studio's JSON export comes back as COCO labels in :mod:`det_al.annotation.label_studio_import`.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from typing import Callable
from urllib.parse import quote, urlsplit

import cv2
import numpy as np

from det_al.errors import InputError
from det_al.data.segmentation import segmentation_to_mask

logger = logging.getLogger(__name__)

#: Names used in the labeling config and in every region.
IMAGE_NAME = "image"
BOX_NAME = "bbox"
POLYGON_NAME = "polygon"

#: URI schemes Label Studio resolves through a connected cloud storage.
CLOUD_SCHEMES = ("s3://", "gs://", "azure-blob://")


# --------------------------------------------------------------------------- image URLs


def local_files_url(image_path: str | os.PathLike, document_root: str | os.PathLike) -> str:
    """URL of a file served by Label Studio's local-files storage.

    The server must run with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
    ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=document_root``, and the project needs a local
    storage whose path is (under) ``document_root``.

    >>> local_files_url("/data/pool/a b.jpg", "/data")
    '/data/local-files/?d=pool/a%20b.jpg'
    """
    relative = os.path.relpath(os.path.abspath(image_path), os.path.abspath(document_root))
    if relative == os.curdir or relative.startswith(os.pardir):
        raise InputError(f"image is not under the local-files document root {os.fspath(document_root)}", image_path)
    return "/data/local-files/?d=" + quote(relative.replace(os.sep, "/"))


def prefixed_url(file_name: str, prefix: str) -> str:
    """``prefix/file_name``; the path is URL-quoted for http(s) prefixes, kept as is for cloud URIs.

    >>> prefixed_url("dir/a b.jpg", "https://host/images/")
    'https://host/images/dir/a%20b.jpg'
    >>> prefixed_url("dir/a b.jpg", "s3://bucket/pool")
    's3://bucket/pool/dir/a b.jpg'
    """
    path = file_name.replace(os.sep, "/").lstrip("/")
    if not prefix.startswith(CLOUD_SCHEMES):
        path = quote(path)
    return prefix.rstrip("/") + "/" + path


def check_url_prefix(prefix: str) -> None:
    """Raise :class:`InputError` unless ``prefix`` is an ``http(s)://host/...`` URL: the only links an
    annotator's browser opens (``javascript:``, ``file:``, ``ftp:``, a bare path, a typo would give
    tasks whose images never load; buckets go through ``cloud_prefix``).

    >>> check_url_prefix("https://host/images")
    >>> check_url_prefix("s3://bucket/pool")
    Traceback (most recent call last):
    det_al.errors.InputError: --url-prefix 's3://bucket/pool' is a bucket URI: use --cloud-prefix (and connect the bucket as the project's cloud storage)
    """
    if prefix.startswith(CLOUD_SCHEMES):
        raise InputError(f"--url-prefix {prefix!r} is a bucket URI: use --cloud-prefix (and connect the bucket "
                         "as the project's cloud storage)")
    parts = urlsplit(prefix)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise InputError(f"--url-prefix {prefix!r} is not an http(s)://host/... URL (an annotator's browser opens "
                         f"only those; for buckets use --cloud-prefix with {', '.join(CLOUD_SCHEMES)})")


def image_url_function(
    *,
    local_files_root: str | os.PathLike | None = None,
    url_prefix: str | None = None,
    cloud_prefix: str | None = None,
    image_url: Callable[[dict], str] | None = None,
    image_root: str | os.PathLike | None = None,
) -> Callable[[dict], str]:
    """``image_url(image_dict) -> str`` from exactly one of the URL sources of the export.

    ``local_files_root`` (Label Studio's local-files document root; the files are found under
    ``image_root``), ``url_prefix`` (http(s)), ``cloud_prefix`` (one of :data:`CLOUD_SCHEMES`) or
    a callable ``image_url``. Anything else is an :class:`InputError`.
    """
    given = [name for name, value in (("local_files_root", local_files_root), ("url_prefix", url_prefix),
                                      ("cloud_prefix", cloud_prefix), ("image_url", image_url)) if value is not None]
    if len(given) != 1:
        raise InputError("give exactly one image URL source: local_files_root (--local-files-root), url_prefix "
                         f"(--url-prefix), cloud_prefix (--cloud-prefix) or image_url; got {', '.join(given) or 'none'}")
    if image_url is not None:
        return image_url
    if local_files_root is not None:
        if not image_root:
            raise InputError("--local-files-root needs --image-root (where the images are)")
        root, document_root = os.fspath(image_root), os.fspath(local_files_root)
        return lambda image: local_files_url(os.path.join(root, image["file_name"]), document_root)
    if cloud_prefix is not None and not cloud_prefix.startswith(CLOUD_SCHEMES):
        raise InputError(f"--cloud-prefix must start with one of {', '.join(CLOUD_SCHEMES)}")
    if url_prefix is not None:
        check_url_prefix(url_prefix)
    prefix = url_prefix if url_prefix is not None else cloud_prefix
    return lambda image: prefixed_url(image["file_name"], prefix)


# --------------------------------------------------------------------------- geometry


def box_to_percent(bbox: list[float], width: int, height: int) -> dict[str, float]:
    """COCO ``[x, y, w, h]`` pixels -> Label Studio ``{x, y, width, height}`` percent.

    The box is clipped to the image first; the result satisfies ``x + width <= 100`` and
    ``y + height <= 100`` exactly in floating point.
    """
    x1, y1, w, h = (float(v) for v in bbox)
    x1, x2 = min(max(x1, 0.0), width), min(max(x1 + w, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y1 + h, 0.0), height)
    x, y = 100.0 * x1 / width, 100.0 * y1 / height
    value = {"x": x, "y": y, "width": 100.0 * x2 / width - x, "height": 100.0 * y2 / height - y}
    for start, size in (("x", "width"), ("y", "height")):
        while value[start] + value[size] > 100.0:  # float noise: shave off ulps
            value[size] = math.nextafter(value[size], 0.0)
    return value


def validate_percent_value(value: dict, kind: str) -> None:
    """Raise ``ValueError`` unless a region value's coordinates are percentages inside the image."""
    if kind == "rectanglelabels":
        for key in ("x", "y", "width", "height"):
            v = value.get(key)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 100.0:
                raise ValueError(f"rectangle {key}={v!r} is not a percentage in [0, 100]")
        if value["x"] + value["width"] > 100.0 or value["y"] + value["height"] > 100.0:
            raise ValueError(f"rectangle leaves the image: x+width={value['x'] + value['width']}, "
                             f"y+height={value['y'] + value['height']}")
    elif kind == "polygonlabels":
        points = value.get("points")
        if not points or len(points) < 3:
            raise ValueError("polygon needs at least 3 points")
        for p in points:
            if len(p) != 2 or not all(isinstance(v, (int, float)) and 0.0 <= v <= 100.0 for v in p):
                raise ValueError(f"polygon point {p!r} is not a pair of percentages in [0, 100]")


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.0) -> list[np.ndarray]:
    """Outer contours of a binary mask ``[H, W]``, largest first, as ``[P, 2]`` float ``(x, y)`` pixels.

    Points are the centres of boundary pixels (OpenCV ``findContours``); ``tolerance > 0``
    simplifies each contour with ``approxPolyDP`` (maximum distance in pixels). Contours with
    fewer than 3 points are dropped.
    """
    binary = np.ascontiguousarray(mask, dtype=np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contours = sorted(contours, key=cv2.contourArea, reverse=True)
    polygons = []
    for c in contours:
        if tolerance > 0:
            c = cv2.approxPolyDP(c, tolerance, True)
        if len(c) >= 3:
            polygons.append(c.reshape(-1, 2).astype(np.float64))
    return polygons


# --------------------------------------------------------------------------- export


def labeling_config(categories: list[dict], polygons: bool = False) -> str:
    """The labeling config XML: an image, rectangle labels and (``polygons``) polygon labels.

    Each ``<Label>`` carries the category name and its COCO id as ``category`` (used by Label
    Studio's own COCO export).
    """
    view = ET.Element("View")
    ET.SubElement(view, "Image", name=IMAGE_NAME, value=f"${IMAGE_NAME}", zoom="true")
    controls = [("RectangleLabels", BOX_NAME)] + ([("PolygonLabels", POLYGON_NAME)] if polygons else [])
    for tag, name in controls:
        control = ET.SubElement(view, tag, name=name, toName=IMAGE_NAME)
        for c in categories:
            ET.SubElement(control, "Label", value=str(c["name"]), category=str(c["id"]))
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def annotation_to_regions(
    ann: dict, width: int, height: int, label: str, polygons: bool = True, tolerance: float = 0.0
) -> list[dict]:
    """Label Studio prediction regions for one COCO annotation (one region, or none if degenerate).

    A mask (``segmentation``) becomes a polygon traced from its largest part when ``polygons``;
    otherwise the box becomes a rectangle. The region's ``score`` is the detector confidence.
    """
    common = {
        "id": f"det{ann['id']}",
        "from_name": BOX_NAME,
        "to_name": IMAGE_NAME,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
    }
    if "score" in ann:
        common["score"] = float(ann["score"])
    segmentation = ann.get("segmentation")
    if polygons and segmentation:
        mask = segmentation_to_mask(segmentation, height, width)
        traced = mask_to_polygons(mask, tolerance)
        if len(traced) > 1:
            logger.debug("annotation %s: mask has %d parts; keeping the largest", ann["id"], len(traced))
        if traced:
            points = [[100.0 * x / width, 100.0 * y / height] for x, y in traced[0].tolist()]
            value = {"points": points, "closed": True, "polygonlabels": [label]}
            validate_percent_value(value, "polygonlabels")
            return [{**common, "from_name": POLYGON_NAME, "type": "polygonlabels", "value": value}]
    value = {**box_to_percent(ann["bbox"], width, height), "rotation": 0, "rectanglelabels": [label]}
    if value["width"] <= 0 or value["height"] <= 0:
        logger.debug("annotation %s: empty box after clipping; no region", ann["id"])
        return []
    validate_percent_value(value, "rectanglelabels")
    return [{**common, "type": "rectanglelabels", "value": value}]


def prediction_scores(informativeness: list[float]) -> list[float]:
    """Prediction scores in ``[0, 1]``, lowest for the most informative image.

    ``1 - informativeness`` when every value is in ``[0, 1]`` (the ``max``, ``mean`` and ``topk``
    reductions); otherwise (``sum`` grows past 1) ``1 - informativeness / max`` so that Label
    Studio's uncertainty sampling keeps det_al's order.

    >>> prediction_scores([0.9, 0.25]), prediction_scores([4.0, 1.0])
    ([0.1, 0.75], [0.0, 0.75])
    """
    if all(0.0 <= v <= 1.0 for v in informativeness):
        return [round(1.0 - v, 6) for v in informativeness]
    top = max(max(informativeness), 1e-12)
    logger.info("informativeness outside [0, 1]: prediction scores are 1 - informativeness / %g", top)
    return [round(min(max(1.0 - v / top, 0.0), 1.0), 6) for v in informativeness]


def selection_to_tasks(
    selection: dict,
    image_url: Callable[[dict], str],
    model_version: str,
    polygons: bool = True,
    tolerance: float = 0.0,
) -> list[dict]:
    """Label Studio tasks for a selection, one per image in the selection's (rank) order.

    ``image_url(image_dict) -> str`` gives each image's URL. The prediction's ``score`` comes
    from :func:`prediction_scores`.
    """
    names = {c["id"]: str(c["name"]) for c in selection.get("categories", [])}
    scores = prediction_scores([float(im.get("informativeness", 0.0)) for im in selection["images"]])
    by_image: dict = {}
    for ann in selection.get("annotations", []):
        by_image.setdefault(ann["image_id"], []).append(ann)
    tasks = []
    for image, score in zip(selection["images"], scores):
        width, height = int(image["width"]), int(image["height"])
        regions = []
        for ann in by_image.get(image["id"], []):
            if ann["category_id"] not in names:
                raise InputError(
                    f"annotation {ann['id']} has category_id {ann['category_id']}, not among the categories")
            regions += annotation_to_regions(ann, width, height, names[ann["category_id"]], polygons, tolerance)
        data = {
            IMAGE_NAME: image_url(image),
            "image_id": image["id"],
            "file_name": image["file_name"],
            "width": width,
            "height": height,
        }
        for key in ("rank", "informativeness"):
            if key in image:
                data[key] = image[key]
        prediction = {"model_version": model_version, "score": score, "result": regions}
        tasks.append({"data": data, "predictions": [prediction]})
    return tasks


def has_masks(selection: dict) -> bool:
    return any(a.get("segmentation") for a in selection.get("annotations", []))
