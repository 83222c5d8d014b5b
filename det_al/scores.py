"""A scored pool and a selection from it, in memory and on disk.

:class:`Scores` holds what ``det-al score`` writes (the ranking, the pseudo-labels, skipped
images, embeddings) and reads and writes those files; :class:`Selection` holds a
``selection.json``. :func:`det_al.score_images` and :func:`det_al.select` return them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from det_al.config import Config
from det_al.errors import InputError
from det_al.data.files import atomic_open, read_json, write_json, write_jsonl

#: Ranking fields an :class:`ImageScore` lists as its components (those a record has).
COMPONENT_FIELDS = ("class", "box", "mask", "presence", "novelty")


@dataclass(frozen=True)
class ImageScore:
    """One scored image of a :class:`Scores`.

    Attributes:
        image_id, file_name: the pool's (in-memory images: ``i + 1`` and ``images[i]``).
        rank: 1 for the most informative image.
        informativeness: the image's score (higher: label it sooner).
        components: the ranking's per-term values (``class``, ``box``, ``mask``, ``presence``,
            and ``novelty`` when computed), each in [0, 1].
        n_objects: objects that count towards the score.
        empty: nothing was detected (the empty-image policy set the informativeness).
        certain: informativeness below ``scoring.certain_threshold``.
        detections: the image's pseudo-labels, COCO annotations (``bbox`` ``[x, y, w, h]`` in
            pixels, ``category_id``, ``score``, per-object ``uncertainty``, RLE ``segmentation``).
        record: the whole ``ranking.jsonl`` record.
    """

    image_id: int
    file_name: str
    rank: int
    informativeness: float
    components: dict[str, float]
    n_objects: int
    empty: bool
    certain: bool
    detections: list[dict]
    record: dict


class Scores(SequenceABC):
    """A scored pool: a sequence of :class:`ImageScore`, most informative first.

    The same data as the files of ``det-al score``: :attr:`ranking` (the ``ranking.jsonl``
    records), :meth:`pseudo_labels` (the COCO dict of ``pseudo_labels.json``), :attr:`skipped`,
    :attr:`embeddings` ``[N, D]`` with :attr:`embedding_ids`. :meth:`save` writes those files,
    :meth:`load` reads them (so ``Scores.load("scores/")`` reads a ``det-al score`` folder).
    """

    def __init__(
        self,
        ranking: list[dict],
        pseudo_labels: dict,
        skipped: list[dict] | None = None,
        embeddings: np.ndarray | None = None,
        embedding_ids: list[int] | None = None,
        passes: list[dict] | None = None,
        labelled_embeddings: np.ndarray | None = None,
        run: dict | None = None,
        source: Path | None = None,
    ):
        self.ranking = ranking
        self._pseudo_labels = pseudo_labels
        self.skipped = list(skipped or [])
        self.embeddings = np.zeros((0, 0), np.float32) if embeddings is None else embeddings
        self.embedding_ids = list(embedding_ids or [])
        self.passes = passes
        self.labelled_embeddings = labelled_embeddings
        self.run = dict(run or {})
        self.source = source
        self._by_image: dict[int, list[dict]] | None = None

    # ---- sequence

    def __len__(self) -> int:
        return len(self.ranking)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        record = self.ranking[index]
        if self._by_image is None:
            self._by_image = {}
            for ann in self._pseudo_labels.get("annotations", []):
                self._by_image.setdefault(ann["image_id"], []).append(ann)
        return ImageScore(
            image_id=record["image_id"],
            file_name=record.get("file_name", ""),
            rank=record["rank"],
            informativeness=float(record["informativeness"]),
            components={k: float(record[k]) for k in COMPONENT_FIELDS if k in record},
            n_objects=int(record.get("n_objects", 0)),
            empty=bool(record.get("empty", False)),
            certain=bool(record.get("certain", False)),
            detections=[dict(a) for a in self._by_image.get(record["image_id"], [])],
            record=dict(record),
        )

    def __repr__(self) -> str:
        top = f", top: {self.ranking[0].get('file_name')!r} ({self.ranking[0]['informativeness']:.3f})" if self.ranking else ""
        return f"Scores({len(self)} images, {len(self.skipped)} skipped{top})"

    # ---- views

    def pseudo_labels(self) -> dict:
        """The COCO dict of the pseudo-labels (a copy): scored images, categories, one annotation
        per detection of the deterministic pass."""
        import copy

        return copy.deepcopy(self._pseudo_labels)

    @property
    def categories(self) -> list[dict]:
        return list(self._pseudo_labels.get("categories", []))

    def strategy_context(self, labelled_embeddings: Any = None) -> dict[str, Any]:
        """What the selection strategies may use (see :mod:`det_al.selection.strategies`)."""
        from det_al.selection.strategies import classes_from_annotations

        context: dict[str, Any] = {"image_classes": classes_from_annotations(self._pseudo_labels.get("annotations", []))}
        if len(self.embedding_ids):
            context["embeddings"] = self.embeddings
            context["embedding_ids"] = self.embedding_ids
        if labelled_embeddings is None:
            labelled_embeddings = self.labelled_embeddings
        elif isinstance(labelled_embeddings, (str, os.PathLike)):
            if not Path(labelled_embeddings).exists():
                raise InputError("file not found", labelled_embeddings)
            labelled_embeddings = np.load(labelled_embeddings)
        if labelled_embeddings is not None:
            context["labelled_embeddings"] = labelled_embeddings
        return context

    def select(self, strategy: Any = "top", **kwargs: Any) -> "Selection":
        """:func:`det_al.select` on these scores."""
        from det_al.api import select

        return select(self, strategy, **kwargs)

    # ---- files

    @classmethod
    def from_results(cls, results: list[dict], categories: list[dict], config: Config) -> "Scores":
        """Scores from in-memory result lines (:func:`det_al.scoring.score_pool.iter_results`), holding what
        :func:`det_al.results.assemble.assemble_outputs` would write for them."""
        from det_al import __version__
        from det_al.scoring.score_pool import records_from_results

        images, annotations, passes, skipped, rows, ids = [], [], [], [], [], []
        for line in results:
            if "skipped" in line:
                skipped.append({"image_id": line["image_id"], "file_name": line["file_name"], "reason": line["skipped"]})
                continue
            image = {"id": line["image_id"], "file_name": line["file_name"]}
            image.update({k: line[k] for k in ("width", "height") if k in line})
            images.append(image)
            for ann in line.get("annotations", []):
                annotations.append({"id": len(annotations) + 1, "image_id": line["image_id"], **ann})
            passes.append({"image_id": line["image_id"], **line.get("passes", {})})
            if line.get("embedding") is not None:
                rows.append(line["embedding"])
                ids.append(line["image_id"])
        pseudo_labels = {
            "info": {"description": "det_al pseudo-labels", "version": __version__},
            "categories": list(categories),
            "images": images,
            "annotations": annotations,
        }
        embeddings = np.asarray(rows, dtype=np.float32) if rows else np.zeros((0, 0), np.float32)
        from det_al.config import config_to_dict

        return cls(records_from_results(results, config), pseudo_labels, skipped, embeddings, ids, passes,
                   run={"config": config_to_dict(config)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Scores":
        """Read the outputs of ``det-al score`` (or :meth:`save`): a folder, or its ``ranking.jsonl``
        (the other files are read beside it). ``passes.jsonl`` is not read (large)."""
        from det_al.selection.files import read_ranking, selection_context

        path = Path(path)
        ranking_path = path / "ranking.jsonl" if path.is_dir() else path
        folder = ranking_path.parent
        ranking = read_ranking(ranking_path)
        context = selection_context(folder)
        skipped = read_json(folder / "skipped.json") if (folder / "skipped.json").exists() else []
        run = read_json(folder / "run.json") if (folder / "run.json").exists() else {}
        embeddings = context.get("embeddings")
        return cls(ranking, context["pseudo_labels"], skipped, embeddings, context.get("embedding_ids"),
                   labelled_embeddings=context.get("labelled_embeddings"), run=run, source=folder)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the files of ``det-al score`` into ``out_dir`` (``ranking.jsonl``,
        ``pseudo_labels.json``, ``embeddings.npy`` + ``embeddings_ids.json``, ``skipped.json``,
        ``run.json``, and ``passes.jsonl`` when held), each atomically; ``out_dir``."""
        from det_al import __version__

        out = Path(out_dir)
        write_jsonl(out / "ranking.jsonl", self.ranking)
        write_json(out / "pseudo_labels.json", self._pseudo_labels)
        if self.passes is not None:
            write_jsonl(out / "passes.jsonl", self.passes)
        embeddings = self.embeddings if len(self.embedding_ids) else np.zeros((0, 0), np.float32)
        with atomic_open(out / "embeddings.npy", "wb") as f:
            np.save(f, np.asarray(embeddings, dtype="<f4"))
        write_json(out / "embeddings_ids.json", list(self.embedding_ids))
        if self.labelled_embeddings is not None:
            with atomic_open(out / "labelled_embeddings.npy", "wb") as f:
                np.save(f, np.asarray(self.labelled_embeddings))
        write_json(out / "skipped.json", self.skipped, indent=1)
        counts = {"n_scored": len(self.ranking), "n_skipped": len(self.skipped),
                  "n_certain": sum(bool(r.get("certain")) for r in self.ranking),
                  "n_empty": sum(bool(r.get("empty")) for r in self.ranking)}
        run = {"det_al_version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **self.run, **counts}
        write_json(out / "run.json", run, indent=1)
        return out


@dataclass(frozen=True)
class Selection:
    """A batch chosen from a ranking: :attr:`coco` is the ``selection.json`` COCO dict (the
    chosen images in rank order, each with ``rank`` and ``informativeness``, their pseudo-labels
    and the categories)."""

    coco: dict
    strategy: str = "top"
    n_ranked: int | None = None

    @property
    def image_ids(self) -> list[int]:
        return [im["id"] for im in self.coco["images"]]

    @property
    def n_annotations(self) -> int:
        return len(self.coco.get("annotations", []))

    def __len__(self) -> int:
        return len(self.coco["images"])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the selection as COCO JSON to ``path`` (a ``.json`` file, or a folder that gets
        ``selection.json``); the path written."""
        path = Path(path)
        if path.suffix.lower() != ".json":
            path = path / "selection.json"
        write_json(path, self.coco, indent=1)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Selection":
        from det_al.data.coco import load_coco

        return cls(load_coco(path))
