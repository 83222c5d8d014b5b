"""Retrain from the journal: annotations -> COCO -> fine-tune -> rescore -> a new model version.

``det-al retrain`` (or :func:`retrain`) runs beside a running ``det-al serve``, never inside a
request:

1. :func:`journal_to_coco` folds the journal (:func:`det_al.serve.journal.journal_tasks`) into
   tasks of Label Studio's JSON export, maps each task's image back to its file (the same
   :class:`det_al.serve.paths.ImageRoots` as the backend) and reads them with det_al's importer
   (:func:`det_al.annotation.label_studio_import.tasks_to_coco`): ``labels.json``;
2. the labels are added to the training set (``--train``, with
   :func:`det_al.annotation.merge.merge_labels`; the labels alone without one) and the model is
   fine-tuned from the served checkpoint with ``det-al train``'s
   :func:`det_al.loop.training.train_model`: ``model/last.pt``;
3. the pool (``--pool``, else every image under the image root) less the labelled images is
   rescored with the new model (:func:`det_al.score_images`): ``scores/``;
4. the new checkpoint's model version (:func:`det_al.serve.server.checkpoint_version`) is
   written to ``retrain.json``.

Then restart ``det-al serve`` with the new checkpoint and scores folder and move Label Studio's
project to the new version (``PATCH /api/ml/{id}`` with the new ``title``, repeating ``url``
and ``project``): the backend's title, the project's model version and the predictions'
version must stay equal, else every task's prediction score is empty and uncertainty sampling
falls back to random.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from det_al.errors import InputError
from det_al.serve.paths import ImageRoots, TaskImageError

logger = logging.getLogger(__name__)


def journal_to_coco(journal: str | os.PathLike, roots: ImageRoots, categories: Sequence[dict], *,
                    project: Any = None, pool: dict | None = None, image_key: str = "image"):
    """``(labels COCO dict, ImportReport)`` of the journal's finished annotations.

    Image ids and file names come from ``pool`` (matched by ``file_name`` relative to
    ``roots.image_root``) when given, else ids are numbered from 1 in journal order. Sizes are
    read from the files. A task whose image cannot be mapped under the roots is an
    :class:`InputError`.
    """
    from det_al.annotation.label_studio_import import tasks_to_coco
    from det_al.data.images import ImageReadError, image_size
    from det_al.serve.journal import journal_tasks

    tasks = journal_tasks(journal, project)
    by_name = {im["file_name"]: im for im in (pool or {}).get("images", [])}
    next_id = max([int(im["id"]) for im in by_name.values()] + [0]) + 1
    images, rewritten = {}, []
    for task in tasks:
        try:
            path = roots.task_image(task["data"], image_key)
        except TaskImageError as e:
            raise InputError(f"task {task['id']}: {e}", journal) from None
        name = roots.relative_name(path)
        if name is None:
            raise InputError(f"task {task['id']}: {path} is not under the image root {roots.image_root}", journal)
        if name not in images:
            try:
                width, height = image_size(path)
            except ImageReadError as e:
                raise InputError(f"task {task['id']}: {e}", journal) from None
            known = by_name.get(name)
            if known is None:
                known, next_id = {"id": next_id, "file_name": name}, next_id + 1
            images[name] = {**known, "width": width, "height": height}
        rewritten.append({**task, "data": {"image_id": images[name]["id"], "file_name": name}})
    selection = {"images": list(images.values()), "categories": list(categories)}
    return tasks_to_coco(rewritten, selection, path=journal)


def retrain(journal: str | os.PathLike, checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *,
            image_root: str | os.PathLike | None = None, local_files_root: str | os.PathLike | None = None,
            url_prefix: str | None = None, train: str | os.PathLike | None = None,
            pool: str | os.PathLike | None = None, config: Any = None, overrides: Sequence[str] = (),
            project: Any = None, passes: int | None = None, seed: int | None = None, device: str = "cpu",
            progress: bool = True) -> dict:
    """Run the four steps of the module docstring into ``out_dir``; returns what
    ``retrain.json`` holds (``model_version``, ``checkpoint``, ``scores``, ``labels``, ``n_labelled``,
    ``n_annotations``, ``import``)."""
    import det_al
    from det_al.annotation.merge import merge_labels
    from det_al.api import as_config
    from det_al.config import override_config
    from det_al.data.coco import load_coco
    from det_al.data.files import write_json
    from det_al.loop.training import train_model
    from det_al.serve.server import checkpoint_version

    out = Path(out_dir)
    if (out / "retrain.json").exists():
        raise InputError("holds an earlier retrain (retrain.json); give a new --out", out)
    roots = ImageRoots.make(image_root, local_files_root, url_prefix)
    loaded = det_al.load_model(checkpoint, config, device=device)
    run_config = override_config(as_config(loaded.config), list(overrides), "--set")
    categories = loaded.categories
    if not categories:
        raise InputError("the checkpoint carries no categories (a plain state dict): retrain needs a det_al checkpoint",
                         checkpoint)
    pool_coco = load_coco(pool) if pool is not None else None
    labels, report = journal_to_coco(journal, roots, categories, project=project, pool=pool_coco)
    if not labels["annotations"]:
        raise InputError(f"no finished annotation to train on ({report.summary()})", journal)
    write_json(out / "labels.json", labels)
    if train is not None:
        merged = merge_labels(load_coco(train), labels, pool_coco, (os.fspath(train), None, None))
        train_coco, remaining = merged.train, (merged.pool if pool_coco is not None else None)
    else:
        train_coco = labels
        labelled = {im["file_name"] for im in labels["images"]}
        remaining = None if pool_coco is None else {
            **pool_coco, "images": [im for im in pool_coco["images"] if im["file_name"] not in labelled],
            "annotations": []}
    write_json(out / "train.json", train_coco)
    logger.info("%s; training on %d images", report.summary(), len(train_coco["images"]))
    summary = train_model(run_config, out / "train.json", roots.image_root, out / "model", categories=categories,
                          init_checkpoint=checkpoint, device=device, progress=progress)
    new_checkpoint = Path(summary["last"])
    model = det_al.load_model(new_checkpoint, device=device)
    if remaining is None:  # no pool file: every image under the image root, less the labelled ones
        from det_al.data.coco import pool_from_folder

        labelled = {im["file_name"] for im in labels["images"]}
        folder = pool_from_folder(roots.image_root, sizes=False)
        remaining = {"images": [im for im in folder["images"] if im["file_name"] not in labelled],
                     "categories": categories, "annotations": []}
    det_al.score_images(model, remaining, image_root=roots.image_root, out_dir=out / "scores", passes=passes, seed=seed,
                        progress=progress)
    record = {"model_version": checkpoint_version(new_checkpoint), "checkpoint": str(new_checkpoint),
              "scores": str(out / "scores"), "labels": str(out / "labels.json"), "n_labelled": len(labels["images"]),
              "n_annotations": len(labels["annotations"]), "import": report.summary()}
    write_json(out / "retrain.json", record, indent=1)
    return record
