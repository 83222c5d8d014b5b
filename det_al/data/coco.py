"""The COCO boundary: reading and validating COCO files, pools from folders, converters.

Inside det_al boxes are ``xyxy`` float pixels and masks are boolean arrays; COCO's ``xywh``
boxes only appear here, at the edge, and RLE/polygon segmentations in :mod:`det_al.data.segmentation`. Category ids are the user's
(never assumed contiguous); :func:`category_ids_to_labels` gives the model's labels.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor
from torchvision.ops import box_convert

from det_al.errors import InputError
from det_al.data.files import read_json, write_json
from det_al.data.images import IMAGE_EXTENSIONS, ImageReadError, image_size

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- reading and validation


def load_coco(path: str | os.PathLike, require_annotations: bool = False) -> dict:
    """Read a COCO JSON file and validate it (see :func:`validate_coco`).

    Raises:
        InputError: naming the file and the first problem found, on one line.
    """
    return validate_coco(read_json(path), path, require_annotations)


def validate_coco(
    dataset: Any, path: str | os.PathLike | None = None, require_annotations: bool = False
) -> dict:
    """Check the parts of a COCO dict det_al relies on, and return it unchanged.

    Checked: a JSON object with ``images`` and ``categories`` lists (and ``annotations`` when
    ``require_annotations``); images with an integer ``id`` and a non-empty string
    ``file_name`` (``width``/``height`` positive integers when present); categories with an
    integer ``id`` and a string ``name``; no duplicate image, category or annotation ids nor
    category names; annotations with an ``id``, an ``image_id`` and a ``category_id`` that
    exist, and a ``bbox`` of 4 finite numbers with non-negative width and height. Duplicate
    file names are logged as a warning, not refused.

    Raises:
        InputError: naming ``path`` and the problem.
    """

    if not isinstance(dataset, dict):
        raise InputError(f"not a COCO file: expected a JSON object, got a {_json_type(dataset)}", path)
    keys = ("images", "categories") + (("annotations",) if require_annotations else ())
    for key in keys:
        if key not in dataset:
            raise InputError(f"missing key '{key}'", path)
    for key in ("images", "categories", "annotations"):
        if key in dataset and not isinstance(dataset[key], list):
            raise InputError(f"'{key}' must be a list, got a {_json_type(dataset[key])}", path)
    image_ids = _image_indices(dataset["images"], path)
    category_ids = _category_indices(dataset["categories"], path)
    _check_annotations(dataset.get("annotations", []), image_ids, category_ids, path)
    name_counts = Counter(im["file_name"] for im in dataset["images"])
    duplicates = [name for name, count in name_counts.items() if count > 1]
    if duplicates:
        logger.warning(
            "%s: %d file names appear more than once (first: %r)",
            path or "COCO data", len(duplicates), duplicates[0],
        )
    return dataset


def _image_indices(images: list, path) -> dict[int, int]:
    """``{image id: index}`` of valid images with unique ids, else the first problem as an InputError."""
    image_ids: dict[int, int] = {}
    for i, image in enumerate(images):
        problem = image_problem(image, i)
        if problem:
            raise InputError(problem, path)
        if image["id"] in image_ids:
            raise InputError(f"duplicate image id {image['id']} (images[{image_ids[image['id']]}] and images[{i}])",
                             path)
        image_ids[image["id"]] = i
    return image_ids


def _category_indices(categories: list, path) -> dict[int, int]:
    """``{category id: index}`` of categories with an integer id and a string name, ids and names
    unique; else the first problem as an InputError."""
    category_ids: dict[int, int] = {}
    names: dict[str, int] = {}
    for i, category in enumerate(categories):
        where = f"categories[{i}]"
        if not isinstance(category, dict):
            raise InputError(f"{where}: expected an object, got a {_json_type(category)}", path)
        if not _is_int(category.get("id")):
            raise InputError(f"{where}: 'id' must be an integer, got {category.get('id')!r}", path)
        if not isinstance(category.get("name"), str):
            raise InputError(f"{where} (id {category['id']}): missing or non-string 'name'", path)
        if category["id"] in category_ids:
            raise InputError(
                f"duplicate category id {category['id']} (categories[{category_ids[category['id']]}] and {where})",
                path)
        if category["name"] in names:
            raise InputError(
                f"duplicate category name {category['name']!r} (categories[{names[category['name']]}] and {where})",
                path)
        category_ids[category["id"]] = i
        names[category["name"]] = i
    return category_ids


def _check_annotations(annotations: list, image_ids: dict, category_ids: dict, path) -> None:
    """Each annotation valid (:func:`annotation_problem`), its id unique, its image and category known."""
    annotation_ids: dict[int, int] = {}
    for i, ann in enumerate(annotations):
        problem = annotation_problem(ann, i)
        if problem:
            raise InputError(problem, path)
        where = f"annotations[{i}] (id {ann['id']})"
        if ann["id"] in annotation_ids:
            raise InputError(
                f"duplicate annotation id {ann['id']} (annotations[{annotation_ids[ann['id']]}] and annotations[{i}])",
                path)
        annotation_ids[ann["id"]] = i
        if ann["image_id"] not in image_ids:
            raise InputError(f"{where}: unknown image id {ann['image_id']}", path)
        if ann["category_id"] not in category_ids:
            raise InputError(f"{where}: unknown category id {ann['category_id']}", path)


def image_problem(image: Any, index: int) -> str | None:
    """What is wrong with ``images[index]`` of a COCO file, in :func:`validate_coco`'s words.

    ``None`` when it has an integer ``id``, a non-empty string ``file_name`` and, when present,
    positive integer ``width`` and ``height``. Duplicate ids are the caller's to find.
    """
    where = f"images[{index}]"
    if not isinstance(image, dict):
        return f"{where}: expected an object, got a {_json_type(image)}"
    if "id" not in image:
        return f"{where}: missing 'id'"
    if not _is_int(image["id"]):
        return f"{where}: 'id' must be an integer, got {image['id']!r}"
    where = f"{where} (id {image['id']})"
    if "file_name" not in image:
        return f"{where}: missing 'file_name'"
    if not isinstance(image["file_name"], str) or not image["file_name"]:
        return f"{where}: 'file_name' must be a non-empty string"
    for key in ("width", "height"):
        if key in image and not (_is_int(image[key]) and image[key] > 0):
            return f"{where}: '{key}' must be a positive integer, got {image[key]!r}"
    return None


def annotation_problem(ann: Any, index: int) -> str | None:
    """What is wrong with ``annotations[index]`` on its own (integer ids, a valid ``bbox``).

    Whether its ``id`` is unique and its ``image_id`` and ``category_id`` exist is the
    caller's to check (see :func:`validate_coco`).
    """
    where = f"annotations[{index}]"
    if not isinstance(ann, dict):
        return f"{where}: expected an object, got a {_json_type(ann)}"
    for key in ("id", "image_id", "category_id"):
        if not _is_int(ann.get(key)):
            return f"{where}: '{key}' must be an integer, got {ann.get(key)!r}"
    problem = _bbox_problem(ann.get("bbox"))
    if problem:
        return f"{where} (id {ann['id']}): bad bbox {ann.get('bbox')!r}: {problem}"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    if type(value) in names:
        return names[type(value)]
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def _bbox_problem(bbox: Any) -> str | None:
    if bbox is None:
        return "missing"
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return "expected [x, y, width, height]"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        return "values must be numbers"
    if not all(math.isfinite(v) for v in bbox):
        return "values must be finite"
    if bbox[2] < 0 or bbox[3] < 0:
        return "negative width or height"
    return None


def quiet_coco(dataset: dict) -> COCO:
    """A ``pycocotools.coco.COCO`` built in memory from ``dataset``, without its prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_results(coco: COCO, results: list[dict]) -> COCO:
    """``coco.loadRes(results)`` without prints; an empty ``results`` gives an empty COCO.

    ``results`` are COCO results dicts (``image_id``, ``category_id``, ``bbox`` [x, y, w, h],
    ``score`` and optionally ``segmentation``). pycocotools raises on an empty list; this gives
    a results object with the same images and categories and no annotations instead.
    """
    if not results:
        return quiet_coco(
            {
                "images": list(coco.dataset.get("images", [])),
                "categories": list(coco.dataset.get("categories", [])),
                "annotations": [],
            }
        )
    with contextlib.redirect_stdout(io.StringIO()):
        return coco.loadRes(results)


def write_coco(path: str | os.PathLike, dataset: dict) -> None:
    """Write a COCO dict to ``path`` atomically (temporary file, then rename)."""
    write_json(path, dataset)


# ---------------------------------------------------------------- pools from folders


def list_images(
    folder: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> list[str]:
    """Relative POSIX paths of the image files under ``folder`` (recursive, sorted).

    Files are chosen by extension (case-insensitive); hidden files and folders are skipped.
    """
    root = Path(folder)
    extensions = tuple(e.lower() for e in extensions)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(extensions):
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def pool_from_folder(
    folder: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS, sizes: bool = True
) -> dict:
    """A COCO pool dict for every image file under ``folder``.

    Images are sorted by relative path and numbered 1, 2, ...; ``file_name`` is the path
    relative to ``folder`` (the image root). With ``sizes``, ``width``/``height`` are as
    :func:`read_image` returns them (after EXIF rotation), read from the headers only; a file
    whose header cannot be read keeps its place and id without a size (a warning counts them),
    so that scoring lists it as skipped with its reason rather than it vanishing from the pool.
    Without ``sizes`` no file is opened (fast for folders of millions). ``categories`` and
    ``annotations`` are empty lists.

    Raises:
        InputError: the folder does not exist or holds no image files.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError("image folder not found" if not root.exists() else "not a folder", root)
    names = list_images(root, extensions)
    if not names:
        raise InputError(f"no image files found (looked for {', '.join(extensions)})", root)
    images, unreadable = [], 0
    for image_id, name in enumerate(names, start=1):
        image = {"id": image_id, "file_name": name}
        if sizes:
            try:
                image["width"], image["height"] = image_size(root / name)
            except ImageReadError:
                unreadable += 1
        images.append(image)
    if unreadable:
        logger.warning("%s: %d of %d image files cannot be read (they will be listed as skipped)", root, unreadable, len(names))
    return {"images": images, "annotations": [], "categories": []}


# ---------------------------------------------------------------- categories


def categories_by_name(categories: list[dict]) -> dict[str, dict]:
    """``{name: category dict}``; a duplicate name is a ``ValueError``."""
    out: dict[str, dict] = {}
    for category in categories:
        if category["name"] in out:
            raise ValueError(f"duplicate category name {category['name']!r}")
        out[category["name"]] = category
    return out


def category_ids_to_labels(categories: list[dict]) -> dict[int, int]:
    """``{COCO category id: model label}``: label ``l`` (>= 1) is ``categories[l - 1]``."""
    return {int(c["id"]): label for label, c in enumerate(categories, start=1)}


# ---------------------------------------------------------------- boxes


def xyxy_to_xywh(boxes: Tensor | np.ndarray | Sequence) -> list[list[float]]:
    """``[N, 4]`` boxes ``(x1, y1, x2, y2)`` -> COCO ``[[x, y, width, height], ...]`` (plain floats)."""
    t = _boxes_tensor(boxes)
    return box_convert(t, "xyxy", "xywh").tolist()


def xywh_to_xyxy(boxes: Tensor | np.ndarray | Sequence) -> Tensor:
    """COCO ``[N, 4]`` boxes ``(x, y, width, height)`` -> float32 Tensor[N, 4] ``(x1, y1, x2, y2)``."""
    t = _boxes_tensor(boxes)
    return box_convert(t, "xywh", "xyxy")


def _boxes_tensor(boxes: Tensor | np.ndarray | Sequence) -> Tensor:
    t = torch.as_tensor(boxes, dtype=torch.float64 if _is_double(boxes) else torch.float32)
    if t.numel() == 0:
        return t.reshape(0, 4)
    if t.ndim != 2 or t.shape[1] != 4:
        raise ValueError(f"expected boxes of shape (N, 4), got {tuple(t.shape)}")
    return t


def _is_double(boxes: Any) -> bool:
    return getattr(boxes, "dtype", None) in (torch.float64, np.float64)
