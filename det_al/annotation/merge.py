"""Labels files and merging them into a training set.

A *labels file* is the COCO file that ``det-al import`` writes: the labelled images (the
user's ids, file names and sizes), the user's categories, and the annotators' annotations.
:func:`labels_coco` builds one; :func:`merge_labels` adds one to a training set and removes
its images from the pool.

Merging never edits its inputs: it returns new dicts. Images are identified by ``file_name``
(ids differ between files made by different tools); categories are matched by name.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from det_al.data.coco import load_coco
from det_al.data.files import write_json
from det_al.errors import InputError

logger = logging.getLogger(__name__)

#: Image keys that are det_al bookkeeping, not part of the user's image dict.
SELECTION_ONLY_KEYS = ("rank", "informativeness")


@dataclass
class ImportReport:
    """What an import did: counts, and every task or image it skipped with the reason."""

    n_items: int = 0
    n_images: int = 0
    n_annotations: int = 0
    skipped: list[dict] = field(default_factory=list)
    ignored_regions: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, **where) -> None:
        self.skipped.append({**where, "reason": reason})

    def ignore(self, kind: str) -> None:
        self.ignored_regions[kind] = self.ignored_regions.get(kind, 0) + 1

    def finish(self, images: list[dict], categories: list[dict], annotations: list[list[dict]]) -> tuple[dict, "ImportReport"]:
        """The labels COCO of ``images[i]`` with ``annotations[i]``, and this report with its counts set."""
        self.n_images = len(images)
        self.n_annotations = sum(len(a) for a in annotations)
        return labels_coco(images, categories, annotations), self

    def to_dict(self) -> dict:
        return {
            "n_items": self.n_items,
            "n_images": self.n_images,
            "n_annotations": self.n_annotations,
            "n_skipped": len(self.skipped),
            "skipped": self.skipped,
            "ignored_regions": self.ignored_regions,
            "notes": self.notes,
        }

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for s in self.skipped:
            reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
        text = f"imported {self.n_annotations} annotations on {self.n_images} of {self.n_items} images"
        if reasons:
            text += "; skipped " + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        if self.ignored_regions:
            text += "; ignored regions: " + ", ".join(f"{n} {k}" for k, n in sorted(self.ignored_regions.items()))
        return text


def user_image(image: dict) -> dict:
    """The image dict without det_al's selection bookkeeping (rank, informativeness)."""
    return {k: v for k, v in image.items() if k not in SELECTION_ONLY_KEYS}


def labels_coco(images: list[dict], categories: list[dict], annotations: list[list[dict]]) -> dict:
    """COCO labels file: ``images[i]`` with ``annotations[i]``; annotation ids numbered from 1."""
    out_annotations = []
    for image, anns in zip(images, annotations):
        for ann in anns:
            out_annotations.append({"id": len(out_annotations) + 1, "image_id": image["id"], **ann})
    return {
        "info": {"description": "det_al imported labels"},
        "images": [user_image(im) for im in images],
        "categories": copy.deepcopy(categories),
        "annotations": out_annotations,
    }


def category_ids_by_name(categories: list[dict], path: str | os.PathLike | None = None) -> dict[str, int]:
    """``{name: id}``; a repeated name is an :class:`InputError` (names must identify categories)."""
    by_name: dict[str, int] = {}
    for c in categories:
        if c["name"] in by_name:
            raise InputError(f"category name {c['name']!r} is used by ids {by_name[c['name']]} and {c['id']}", path)
        by_name[c["name"]] = c["id"]
    return by_name


def _image_ids(coco: dict | None) -> set:
    return {im["id"] for im in (coco or {}).get("images", [])}


@dataclass
class MergeResult:
    train: dict
    pool: dict
    n_added_images: int
    n_added_annotations: int
    n_removed_from_pool: int
    not_in_pool: list[str]
    renumbered_images: dict[int, int]


def _has_size(image: dict) -> bool:
    return image.get("width") is not None and image.get("height") is not None


def merge_labels(
    train: dict, labels: dict, pool: dict | None = None,
    paths: tuple[str | None, str | None, str | None] = (None, None, None),
) -> MergeResult:
    """Add the labelled images of ``labels`` to ``train`` and drop them from ``pool``.

    - Images are matched by ``file_name``. A labelled image already in ``train`` is an error (it
      would be duplicated); one whose size differs from the pool's entry of the same name is an
      error (a pool entry without a size, as in the ``pool.json`` that ``det-al score`` writes
      for a folder, has none to differ). Labelled images keep their id unless ``train`` already uses it (then they get the
      next id above every id of the three files; ``renumbered_images`` maps old to new).
    - Categories are matched by name to ``train``'s; a labels category whose name ``train``
      lacks is an error. Annotations get ``train``'s category ids and new unique ids after
      ``train``'s largest.
    - ``pool`` (optional) loses the labelled images and their annotations.

    ``paths`` (train, labels, pool file names) only serve error messages.
    """
    train_path, labels_path, pool_path = paths
    category_map = _category_map(train, labels, train_path, labels_path)
    new_images, renumbered, not_in_pool = _new_images(train, labels, pool, labels_path, pool_path)
    new_annotations = _new_annotations(train, labels, category_map, renumbered, labels_path)

    new_train = copy.deepcopy(train)
    new_train["images"] = list(new_train.get("images", [])) + new_images
    new_train["annotations"] = list(new_train.get("annotations", [])) + new_annotations
    new_train.setdefault("categories", [])
    new_pool, n_removed = _pool_without(pool, {im["file_name"] for im in new_images})
    return MergeResult(
        train=new_train,
        pool=new_pool,
        n_added_images=len(new_images),
        n_added_annotations=len(new_annotations),
        n_removed_from_pool=n_removed,
        not_in_pool=not_in_pool,
        renumbered_images=renumbered,
    )


def _category_map(train: dict, labels: dict, train_path, labels_path) -> dict:
    """Labels category id -> the training set's id of the same name; a name it lacks is an error."""
    train_by_name = category_ids_by_name(train.get("categories", []), train_path)
    category_map = {}
    for cat_id, name in ((c["id"], c["name"]) for c in labels.get("categories", [])):
        if name not in train_by_name:
            raise InputError(
                f"category {name!r} (id {cat_id}) is not a category of the training set "
                f"({', '.join(sorted(train_by_name)) or 'none'})",
                labels_path,
            )
        category_map[cat_id] = train_by_name[name]
    return category_map


def _new_images(train: dict, labels: dict, pool: dict | None, labels_path, pool_path) -> tuple[list, dict, list]:
    """The labelled images as the training set will hold them, ids renumbered where ``train``
    uses them; also ``{old id: new id}`` and the names the pool lacks. Checks each image once:
    repeated, already in ``train``, or of another size than in the pool (all such in one error)."""
    train_names = {im["file_name"] for im in train.get("images", [])}
    pool_by_name = {im["file_name"]: im for im in (pool or {}).get("images", [])}
    used_ids = {im["id"] for im in train.get("images", [])}
    # a new id is also kept clear of the pool's and the labels' ids, so that no two images of the
    # project ever share one
    all_ids = used_ids | _image_ids(pool) | _image_ids(labels)
    next_id = max([i for i in all_ids if isinstance(i, int)], default=0) + 1

    seen_names: set[str] = set()
    new_images, renumbered, not_in_pool, resized = [], {}, [], []
    for image in labels.get("images", []):
        name = image["file_name"]
        if name in seen_names:
            raise InputError(f"image {name!r} appears twice", labels_path)
        seen_names.add(name)
        if name in train_names:
            raise InputError(f"image {name!r} is already in the training set", labels_path)
        pooled = pool_by_name.get(name)
        if pooled is None:
            not_in_pool.append(name)
        elif _has_size(pooled) and (pooled["width"], pooled["height"]) != (image.get("width"), image.get("height")):
            resized.append((name, image, pooled))
        new_image = user_image(image)
        if new_image["id"] in used_ids:
            renumbered[new_image["id"]] = next_id
            new_image["id"] = next_id
            next_id += 1
        used_ids.add(new_image["id"])
        new_images.append(new_image)
    if resized:  # all of them in one line, not one per run
        name, image, pooled = resized[0]
        raise InputError(
            f"{len(resized)} labelled image(s) have another size in the pool {pool_path or ''}".rstrip()
            + f" (first: {name!r} is {image.get('width')}x{image.get('height')} here but "
            f"{pooled.get('width')}x{pooled.get('height')} in the pool): if the pool's sizes are stale, use the "
            "pool.json det-al score wrote beside the scores (the files' true sizes)",
            labels_path,
        )
    if not_in_pool and pool is not None:
        logger.warning("%d labelled images are not in the pool: %s", len(not_in_pool), ", ".join(not_in_pool[:5]))
    return new_images, renumbered, not_in_pool


def _new_annotations(train: dict, labels: dict, category_map: dict, renumbered: dict, labels_path) -> list[dict]:
    """Copies of the labels' annotations with fresh ids after ``train``'s largest, the training
    set's category ids and the renumbered image ids."""
    image_ids = _image_ids(labels)
    next_ann_id = max([a["id"] for a in train.get("annotations", []) if isinstance(a.get("id"), int)], default=0) + 1
    new_annotations = []
    for ann in labels.get("annotations", []):
        if ann["image_id"] not in image_ids:
            raise InputError(
                f"annotation {ann.get('id')} refers to image_id {ann['image_id']}, not in images", labels_path)
        if ann["category_id"] not in category_map:
            raise InputError(f"annotation {ann.get('id')} has unknown category_id {ann['category_id']}", labels_path)
        new_ann = copy.deepcopy(ann)
        new_ann["id"] = next_ann_id
        next_ann_id += 1
        new_ann["image_id"] = renumbered.get(ann["image_id"], ann["image_id"])
        new_ann["category_id"] = category_map[ann["category_id"]]
        new_annotations.append(new_ann)
    return new_annotations


def _pool_without(pool: dict | None, file_names: set[str]) -> tuple[dict, int]:
    """A copy of ``pool`` without the images named ``file_names`` and their annotations, and how
    many images it lost (no pool: an empty one)."""
    new_pool = copy.deepcopy(pool) if pool is not None else {"images": [], "annotations": [], "categories": []}
    removed_ids = {im["id"] for im in new_pool.get("images", []) if im["file_name"] in file_names}
    new_pool["images"] = [im for im in new_pool.get("images", []) if im["id"] not in removed_ids]
    if "annotations" in new_pool:
        new_pool["annotations"] = [a for a in new_pool["annotations"] if a["image_id"] not in removed_ids]
    return new_pool, len(removed_ids)


def merge(
    train: Mapping | str | os.PathLike,
    labels: Mapping | str | os.PathLike,
    pool: Mapping | str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
) -> MergeResult:
    """Add the labelled images of ``labels`` (what :func:`det_al.import_label_studio` /
    :func:`det_al.import_cvat` read) to the training set ``train`` and remove them from ``pool``
    (:func:`merge_labels`); each a COCO dict or file. With ``out_dir``, writes ``train.json``
    (and ``pool.json``) there; an output that would overwrite an input is refused."""
    inputs = [Path(p) for p in (train, labels, pool) if isinstance(p, (str, os.PathLike))]
    outputs = [] if out_dir is None else [Path(out_dir) / "train.json"] + ([Path(out_dir) / "pool.json"] if pool is not None else [])
    for o in outputs:
        if any(o.resolve() == i.resolve() for i in inputs):
            raise InputError(f"output {o} would overwrite an input: choose another --out")

    def read(x):
        return None if x is None else dict(x) if isinstance(x, Mapping) else load_coco(x)

    def name(x):
        return os.fspath(x) if isinstance(x, (str, os.PathLike)) else None

    result = merge_labels(read(train), read(labels), read(pool), paths=(name(train), name(labels), name(pool)))
    if out_dir is not None:
        write_json(Path(out_dir) / "train.json", result.train)
        if pool is not None:
            write_json(Path(out_dir) / "pool.json", result.pool)
    return result
