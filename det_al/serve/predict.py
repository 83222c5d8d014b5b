"""The model side of the backend: one loaded detector, answers for Label Studio's ``/predict``.

:class:`Backend` holds the model (loaded once), the images a ``det-al score`` folder already
scored, and the images it scored itself since it started. For each task it answers one entry
of Label Studio's ``results`` list:

- ``{"model_version", "score", "result": [region, ...]}``: the deterministic pass's detections
  as ``rectanglelabels`` (or ``polygonlabels`` for masks when the project's labeling config has a
  ``<PolygonLabels>``) in percent of the original image, named after the project's own control
  and label names (detections whose category name is not a label of the config are left out),
  each with its detector confidence; ``score`` is :func:`task_score` of the informativeness,
  lowest for the most informative image, so that Label Studio's "Uncertainty sampling" and an
  ascending sort by prediction score serve det_al's ranking;
- ``{"model_version"}`` with no ``result`` when the image cannot be mapped under the roots or
  read: Label Studio stores nothing for that task and asks again later; the batch never fails.

Images the scores folder holds are answered from it without running the model. The others are
scored on demand with :func:`det_al.score_images`, under a lock so that concurrent requests
never interleave a model's passes, and kept in memory. The default informativeness fuses image
fields by rank over a pool (:func:`det_al.scoring.informativeness.fuse_ranks`); an image scored
on demand is ranked against every image the backend knows (the scores folder's and those scored
on demand so far, its own batch included) and keeps that value, so answers never change once
given. An image with nothing detected gets the empty-image policy's value over the same images.
"""

from __future__ import annotations

import logging
import os
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from det_al.serve.paths import ImageRoots, TaskImageError

logger = logging.getLogger(__name__)


def task_score(informativeness: float, bounded: bool = True) -> float:
    """The prediction ``score`` of an image: ``1 - informativeness`` for informativeness in
    [0, 1] (``bounded``: every reduction but ``sum`` and every image combination), else
    ``1 / (1 + informativeness)``; both are lowest for the most informative image.

    >>> task_score(0.9), task_score(0.25), task_score(3.0, bounded=False)
    (0.1, 0.75, 0.25)
    """
    value = float(informativeness)
    if bounded:
        return round(min(max(1.0 - value, 0.0), 1.0), 6)
    return round(1.0 / (1.0 + max(value, 0.0)), 6)


@dataclass(frozen=True)
class LabelingConfig:
    """The names a project's labeling config gives: the image's data key and name, and the
    rectangle / polygon controls on it with their labels (``None`` where the config has none)."""

    image_key: str = "image"
    image_name: str = "image"
    box_name: str | None = "bbox"
    box_labels: frozenset[str] | None = None  # None: any label
    polygon_name: str | None = None
    polygon_labels: frozenset[str] | None = None


def parse_labeling_config(xml: str | None) -> LabelingConfig:
    """:class:`LabelingConfig` of a labeling config XML; det_al's own names when ``xml`` is empty.

    >>> c = parse_labeling_config('<View><Image name="img" value="$photo"/>'
    ...     '<RectangleLabels name="box" toName="img"><Label value="cat"/></RectangleLabels></View>')
    >>> c.image_key, c.image_name, c.box_name, sorted(c.box_labels), c.polygon_name
    ('photo', 'img', 'box', ['cat'], None)
    """
    if not xml:
        return LabelingConfig()
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise ValueError(f"labeling config is not XML: {e}") from None
    image = next(iter(root.iter("Image")), None)
    if image is None:
        raise ValueError("labeling config has no <Image> tag")
    name, value = image.get("name", "image"), image.get("value", "$image")
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for tag in ("RectangleLabels", "PolygonLabels"):
        for control in root.iter(tag):
            if control.get("toName") == name and tag not in found:
                labels = frozenset(label.get("value", "") for label in control.iter("Label"))
                found[tag] = (control.get("name", ""), labels)
    box = found.get("RectangleLabels", (None, None))
    polygon = found.get("PolygonLabels", (None, None))
    return LabelingConfig(value.lstrip("$"), name, box[0], box[1], polygon[0], polygon[1])


def detections_to_result(detections: Sequence[Mapping[str, Any]], width: int, height: int,
                         names: Mapping[int, str], config: LabelingConfig, min_score: float = 0.0) -> list[dict]:
    """Label Studio regions for one image's detections (COCO annotations in pixels), named for
    ``config``; ``names`` maps category ids to label names. Detections below ``min_score``, of a
    category the config has no label for, or degenerate after clipping are left out."""
    from det_al.annotation.label_studio import annotation_to_regions

    result = []
    for ann in detections:
        label = names.get(ann.get("category_id"))
        if label is None or float(ann.get("score", 1.0)) < min_score:
            continue
        polygon_ok = config.polygon_name is not None and (config.polygon_labels is None or label in config.polygon_labels)
        box_ok = config.box_name is not None and (config.box_labels is None or label in config.box_labels)
        if not (polygon_ok or box_ok):
            continue
        use_polygon = polygon_ok and bool(ann.get("segmentation"))
        if not use_polygon and not box_ok:
            continue
        for region in annotation_to_regions(dict(ann), width, height, label, polygons=use_polygon):
            region["from_name"] = config.polygon_name if region["type"] == "polygonlabels" else config.box_name
            region["to_name"] = config.image_name
            result.append(region)
    return result


@dataclass
class ScoredImage:
    """What the backend knows of one image: its ranking record (``informativeness`` final),
    detections (COCO annotations) and size."""

    record: dict
    detections: list[dict]
    width: int
    height: int


@dataclass
class Counters:
    """What the backend has done since it started (``/health`` shows it)."""

    tasks: int = 0  # tasks asked for
    from_scores: int = 0  # of those, answered from the scores folder
    scored: int = 0  # images the model scored on demand
    unreadable: int = 0  # entries without result


class Backend:
    """One detector and what it has scored; :meth:`predict` answers Label Studio's ``/predict``.

    Args:
        model: what :func:`det_al.load_model` returns (loaded once, here or by the caller).
        roots: where task images may be read (:class:`det_al.serve.paths.ImageRoots`).
        model_version: the version every answer carries (and ``/setup`` answers).
        scores: a ``det-al score`` folder (or :class:`det_al.Scores`) whose file names are
            relative to ``roots.image_root``; its images are answered without a model run.
        passes, seed: for images scored on demand (default: the checkpoint config's).
        min_score: regions below this detector confidence are not sent.
    """

    def __init__(self, model: Any, roots: ImageRoots, model_version: str, *, scores: Any = None,
                 passes: int | None = None, seed: int | None = None, min_score: float = 0.0):
        from det_al.api import LoadedModel

        if not isinstance(model, LoadedModel):
            raise TypeError("model: expected what det_al.load_model returns")
        self.model = model
        self.roots = roots
        self.model_version = str(model_version)
        self.passes, self.seed, self.min_score = passes, seed, float(min_score)
        self.config = model.config
        scoring = self.config.scoring
        self.bounded = bool(scoring.image_weights) or scoring.reduction != "sum"
        self.lock = threading.Lock()  # one model: its passes never interleave
        self._table_lock = threading.Lock()
        self.images: dict[Path, ScoredImage] = {}
        self.from_folder: set[Path] = set()
        self.counters = Counters()
        self.categories: list[dict] = list(model.categories or [])
        if scores is not None:
            self._load_scores(scores)

    # ---- the scores folder

    def _load_scores(self, scores: Any) -> None:
        from det_al.data.images import ImageReadError, image_size
        from det_al.scores import Scores

        if not isinstance(scores, Scores):
            scores = Scores.load(scores)
        if not self.categories:
            self.categories = scores.categories
        sizes = {im["id"]: (int(im.get("width", 0)), int(im.get("height", 0)))
                 for im in scores.pseudo_labels()["images"]}
        root = self.roots.image_root
        for item in scores:
            path = (root / item.file_name).resolve()
            width, height = sizes.get(item.image_id, (0, 0))
            if not (width and height):  # an older pseudo-labels file without sizes
                try:
                    width, height = image_size(path)
                except ImageReadError as e:
                    logger.warning("%s: %s; answered on demand instead", item.file_name, e)
                    continue
            self.images[path] = ScoredImage(dict(item.record), item.detections, width, height)
        self.from_folder = set(self.images)
        logger.info("%d scored images from %s", len(self.images), scores.source)

    # ---- answers

    def names(self) -> dict[int, str]:
        return {c["id"]: str(c["name"]) for c in self.categories}

    def entry(self, image: ScoredImage | None, config: LabelingConfig) -> dict:
        """One entry of ``results``: without ``result`` when ``image`` is ``None``."""
        if image is None:
            return {"model_version": self.model_version}
        result = detections_to_result(image.detections, image.width, image.height, self.names(), config,
                                      self.min_score)
        return {"model_version": self.model_version,
                "score": task_score(image.record["informativeness"], self.bounded), "result": result}

    def predict(self, tasks: Sequence[Mapping[str, Any]], label_config: str | None = None) -> list[dict]:
        """One entry per task, in order (see the module docstring)."""
        config = parse_labeling_config(label_config)
        paths: list[Path | None] = []
        for task in tasks:
            data = task.get("data") if isinstance(task, Mapping) else None
            try:
                if not isinstance(data, Mapping):
                    raise TaskImageError("task has no data")
                paths.append(self.roots.task_image(data, config.image_key))
            except TaskImageError as e:
                logger.warning("task %s: %s", task.get("id") if isinstance(task, Mapping) else "?", e)
                paths.append(None)
        wanted = sorted({p for p in paths if p is not None and p not in self.images})
        if wanted:
            self._score(wanted)
        entries = []
        for path in paths:
            image = self.images.get(path) if path is not None else None
            entries.append(self.entry(image, config))
        with self._table_lock:
            self.counters.tasks += len(tasks)
            self.counters.from_scores += sum(p in self.from_folder for p in paths)
            self.counters.unreadable += sum(e.get("result") is None for e in entries)
        return entries

    def _score(self, paths: list[Path]) -> None:
        """Score ``paths`` with the model (under the lock) and add them to :attr:`images`."""
        import det_al

        with self.lock:
            paths = [p for p in paths if p not in self.images]  # another request may have scored them
            if not paths:
                return
            readable = [p for p in paths if p.is_file()]
            for p in sorted(set(paths) - set(readable)):
                logger.warning("%s: no such file", p)
            if not readable:
                return
            try:
                scores = det_al.score_images(self.model, [os.fspath(p) for p in readable], passes=self.passes,
                                             seed=self.seed, progress=False, categories=self.categories or None)
            except det_al.InputError as e:  # these tasks get no result; the batch is still answered
                logger.warning("scoring %d images: %s", len(readable), e)
                return
            for s in scores.skipped:
                logger.warning("%s: %s", s["file_name"], s["reason"])
            sizes = {im["id"]: (int(im["width"]), int(im["height"])) for im in scores.pseudo_labels()["images"]}
            new = {}
            for item in scores:  # a list of paths is numbered 1, 2, ... in its order
                width, height = sizes[item.image_id]
                new[readable[item.image_id - 1]] = ScoredImage(dict(item.record), item.detections, width, height)
            self._place(new)
            self.images.update(new)
            self.counters.scored += len(new)

    def _place(self, new: dict[Path, ScoredImage]) -> None:
        """Give the images of ``new`` (scored together) their informativeness among every image
        known, themselves included (see the module docstring); in place."""
        from det_al.scoring.informativeness import apply_empty_policy, empty_informativeness, fuse_ranks

        scoring = self.config.scoring
        reference = [image.record for image in self.images.values()]
        batch = [image.record for image in new.values()]
        pool = reference + batch
        if scoring.image_combination == "rank" and scoring.image_weights:
            columns = {name: [float(r.get(name, 0.0) or 0.0) for r in pool] for name in scoring.image_weights}
            fused = fuse_ranks(columns, scoring.image_weights, scoring.rank_k)
            for i, record in enumerate(batch):
                record["informativeness"] = float(fused[len(reference) + i])
        fill = empty_informativeness([float(r["informativeness"]) for r in pool if not r.get("empty")], scoring)
        for record in batch:
            apply_empty_policy(record, fill, scoring)
