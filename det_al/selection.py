"""Pick a batch of images from a ranking and turn it into a COCO selection file.

A *strategy* is a plain function ``strategy(ranking, budget) -> chosen records``; ``ranking``
is the list of ``ranking.jsonl`` records, most informative first. :data:`STRATEGIES` maps
names to strategies; later strategies (random, diverse, class-balanced) are added there.

The selection file (``selection.json``) is COCO: the chosen images in rank order, each image
dict carrying its ``rank`` and ``informativeness``, the pseudo-labels of those images, and the
user's categories. Exporters for Label Studio and CVAT read it.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from det_al.errors import InputError
from det_al.files import iter_jsonl, read_json

logger = logging.getLogger(__name__)

Strategy = Callable[[list[dict], int], list[dict]]

#: Ranking fields copied into each image entry of the selection.
CARRIED_FIELDS = ("rank", "informativeness")


def select_top(ranking: list[dict], budget: int) -> list[dict]:
    """The ``budget`` first records of ``ranking`` (sorted by ``rank``), or all of them if fewer.

    >>> [r["image_id"] for r in select_top([{"image_id": 7, "rank": 2}, {"image_id": 3, "rank": 1}], 1)]
    [3]
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    return sorted(ranking, key=lambda r: r["rank"])[:budget]


STRATEGIES: dict[str, Strategy] = {"top": select_top}


def get_strategy(strategy: str | Strategy) -> Strategy:
    """The strategy named ``strategy`` (a callable is returned as is)."""
    if callable(strategy):
        return strategy
    try:
        return STRATEGIES[strategy]
    except KeyError:
        raise ValueError(f"unknown selection strategy {strategy!r}; valid: {', '.join(sorted(STRATEGIES))}") from None


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
    ranking: list[dict], pseudo_labels: dict, budget: int, strategy: str | Strategy = "top",
    pseudo_labels_path: str | os.PathLike | None = None,
) -> dict:
    """Choose ``budget`` images from ``ranking`` with ``strategy``; the COCO selection dict.

    The chosen images are written in rank order, whatever order the strategy returns them in.
    """
    chosen = sorted(get_strategy(strategy)(ranking, budget), key=lambda r: r["rank"])
    if len(chosen) < budget:
        logger.warning("budget %d is larger than the ranking (%d images): selecting all", budget, len(chosen))
    return selection_to_coco(chosen, pseudo_labels, pseudo_labels_path)


def selection_context(scores: Path, labelled_embeddings: str | None = None) -> dict[str, Any]:
    """What the strategies may need from a scores folder: embeddings, ids, predicted classes."""
    from det_al.coco import load_coco
    from det_al.strategies import classes_from_annotations

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
