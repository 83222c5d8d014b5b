"""Pick a batch of images from a ranking and turn it into a COCO selection file.

The strategies themselves (``top``, ``random``, ``diverse``, ``class-balanced``, ``top:KEY``)
and their registry are in :mod:`det_al.selection.strategies`; this module reads rankings and writes
selections.

The selection file (``selection.json``) is COCO: the chosen images in rank order, each image
dict carrying its ``rank`` and ``informativeness``, the pseudo-labels of those images, and the
user's categories. Exporters for Label Studio and CVAT read it.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from det_al.data.coco import load_coco
from det_al.data.files import iter_jsonl, read_json
from det_al.data.images import ImageReadError, check_file_names, check_image_root, image_size
from det_al.errors import InputError
from det_al.selection.strategies import Strategy, classes_from_annotations, run_strategy

logger = logging.getLogger(__name__)

#: Ranking fields copied into each image entry of the selection.
CARRIED_FIELDS = ("rank", "informativeness")


def read_ranking(path: str | os.PathLike) -> list[dict]:
    """Read ``ranking.jsonl``: records with at least ``image_id``, ``rank`` and ``informativeness``.

    Raises :class:`InputError` naming the file and line for malformed records, missing keys,
    repeated image ids or ranks, and for a file with no record (nothing to select from).
    """
    records = []
    seen_ids, seen_ranks = set(), set()
    for number, record in iter_jsonl(path):
        if not isinstance(record, dict):
            raise InputError(f"line {number}: expected a JSON object", path)
        for key in ("image_id", "rank", "informativeness"):
            if key not in record:
                raise InputError(f"line {number}: missing key {key!r}", path)
        if record["image_id"] in seen_ids:
            raise InputError(f"line {number}: image_id {record['image_id']} appears twice", path)
        if record["rank"] in seen_ranks:
            raise InputError(f"line {number}: rank {record['rank']} appears twice", path)
        informativeness = record["informativeness"]
        if not isinstance(informativeness, (int, float)) or not math.isfinite(informativeness):
            raise InputError(f"line {number}: informativeness must be a finite number, got {informativeness!r}", path)
        seen_ids.add(record["image_id"])
        seen_ranks.add(record["rank"])
        records.append(record)
    if not records:
        raise InputError("no records: nothing to select from (were all images skipped? see skipped.json beside it)", path)
    return records


def selection_to_coco(chosen: list[dict], pseudo_labels: dict, path: str | os.PathLike | None = None) -> dict:
    """COCO dict of the ``chosen`` ranking records, in their order, with their pseudo-labels.

    Each image dict is the pseudo-labels' image dict plus the :data:`CARRIED_FIELDS` of its
    ranking record. Annotations keep their ids and every field (score, uncertainty, masks).
    ``path`` names the pseudo-labels file in errors.
    """
    images_by_id = {im["id"]: im for im in pseudo_labels.get("images", [])}
    images = []
    for record in chosen:
        image = images_by_id.get(record["image_id"])
        if image is None:
            raise InputError(f"ranked image_id {record['image_id']} is not among the pseudo-labels' images", path)
        if "file_name" in record and record["file_name"] != image.get("file_name"):
            raise InputError(
                f"image_id {record['image_id']}: ranking says file_name {record['file_name']!r}, "
                f"pseudo-labels say {image.get('file_name')!r}",
                path,
            )
        images.append({**image, **{k: record[k] for k in CARRIED_FIELDS}})
    chosen_ids = {im["id"] for im in images}
    order = {image_id: i for i, image_id in enumerate(im["id"] for im in images)}
    annotations = [a for a in pseudo_labels.get("annotations", []) if a["image_id"] in chosen_ids]
    annotations.sort(key=lambda a: order[a["image_id"]])  # stable: keeps the per-image order
    return {
        "info": {"description": "det_al selection", "n_images": len(images)},
        "images": images,
        "categories": pseudo_labels.get("categories", []),
        "annotations": annotations,
    }


def select_batch(
    ranking: list[dict],
    pseudo_labels: dict,
    budget: int | None = None,
    strategy: str | Strategy = "top",
    pseudo_labels_path: str | os.PathLike | None = None,
    budget_boxes: int | None = None,
    **context: Any,
) -> dict:
    """Choose images from ``ranking`` with ``strategy`` (see :mod:`det_al.selection.strategies`) within
    ``budget`` images and/or ``budget_boxes`` boxes; the COCO selection dict.

    The chosen images are written in rank order, whatever order the strategy returns them in.
    A strategy's ``ValueError`` (a bad name or key) is an :class:`InputError`.
    """
    try:
        chosen = run_strategy(strategy, ranking, budget, budget_boxes, **context)
    except ValueError as e:
        raise InputError(str(e)) from e
    chosen = sorted(chosen, key=lambda r: r["rank"])
    if budget is not None and budget_boxes is None and len(chosen) < budget:
        logger.warning("budget %d is larger than the ranking (%d images): selecting all", budget, len(chosen))
    return selection_to_coco(chosen, pseudo_labels, pseudo_labels_path)


def selection_context(scores: Path, labelled_embeddings: str | None = None) -> dict[str, Any]:
    """What the strategies may need from a scores folder: embeddings, ids, predicted classes."""
    context: dict[str, Any] = {}
    if (scores / "embeddings.npy").exists():
        context["embeddings"] = np.load(scores / "embeddings.npy")
        context["embedding_ids"] = read_json(scores / "embeddings_ids.json")
    labelled = Path(labelled_embeddings) if labelled_embeddings else scores / "labelled_embeddings.npy"
    if labelled_embeddings and not labelled.exists():
        raise InputError("file not found", labelled)
    if labelled.exists():
        context["labelled_embeddings"] = np.load(labelled)
    pseudo_labels = load_coco(scores / "pseudo_labels.json")
    context["image_classes"] = classes_from_annotations(pseudo_labels["annotations"])
    return {"pseudo_labels": pseudo_labels, **context}


def check_image_sizes(
    selection: dict, image_root: str | os.PathLike | None, source: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
) -> None:
    """With ``image_root``, check that every selected image's file has the selection's size
    (after EXIF rotation, as annotation tools show it); an :class:`InputError` names the file.
    A ``file_name`` that escapes ``image_root`` is refused unless ``allow_outside_root``
    (:func:`det_al.data.images.check_file_names`)."""
    if not image_root:
        return
    check_image_root(image_root)
    check_file_names(selection["images"], image_root, source, allow_outside_root)
    for image in selection["images"]:
        path = Path(image_root) / image["file_name"]
        try:
            size = image_size(path)
        except ImageReadError as e:
            raise InputError(e.reason, e.path) from e
        if size != (int(image["width"]), int(image["height"])):
            raise InputError(
                f"image is {size[0]}x{size[1]} (after EXIF rotation) but the selection says "
                f"{image['width']}x{image['height']}", path)
