"""A scored pool and a selection from it, in memory and on disk.

:class:`Scores` holds what ``det-al score`` writes (the ranking, the pseudo-labels, skipped
images, embeddings) and reads and writes those files; :class:`Selection` holds a
``selection.json``. :func:`det_al.score_images` and :func:`det_al.select` return them.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from det_al.config import Config
from det_al.data.coco import load_coco
from det_al.data.files import atomic_open, read_json, write_json, write_jsonl
from det_al.errors import InputError
from det_al.run.assemble import assemble
from det_al.run.result_line import ResultLine
from det_al.selection.files import read_ranking, select_batch, selection_context
from det_al.selection.strategies import classes_from_annotations, default_strategy

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
        #: The folder the images' ``file_name`` entries are relative to (``None``: images in memory).
        self.image_root = Path(self.run["image_root"]) if self.run.get("image_root") else None
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
        return copy.deepcopy(self._pseudo_labels)

    @property
    def categories(self) -> list[dict]:
        return list(self._pseudo_labels.get("categories", []))

    @property
    def images(self) -> list[dict]:
        """The scored images' COCO dicts (``id``, ``file_name``, the files' ``width``/``height``)."""
        return list(self._pseudo_labels.get("images", []))

    def strategy_context(self, labelled_embeddings: Any = None) -> dict[str, Any]:
        """What the selection strategies may use (see :mod:`det_al.selection.strategies`)."""
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
        if self.run.get("labelled_classes") is not None:  # scored with a labelled COCO set
            context["labelled_classes"] = {int(c): int(n) for c, n in self.run["labelled_classes"].items()}
        return context

    def select(
        self,
        strategy: Any = None,
        *,
        budget: int | None = None,
        budget_boxes: int | None = None,
        seed: int = 0,
        pre_factor: float = 3.0,
        labelled_embeddings: np.ndarray | str | os.PathLike | None = None,
        **context: Any,
    ) -> "Selection":
        """Choose a batch to label: :func:`det_al.select` on these scores (see there)."""
        context = {**self.strategy_context(labelled_embeddings), **context}
        if strategy is None:
            strategy = default_strategy(self.ranking, context.get("labelled_classes"))
        where = self.source / "pseudo_labels.json" if self.source else None
        coco = select_batch(
            self.ranking, self._pseudo_labels, budget, strategy, where, budget_boxes=budget_boxes, seed=seed,
            pre_factor=pre_factor, **context,
        )
        if self.image_root is not None:  # selection.json remembers where the images are
            coco["info"] = {**coco.get("info", {}), "image_root": os.fspath(self.image_root)}
        name = strategy if isinstance(strategy, str) else getattr(strategy, "__name__", "custom")
        return Selection(coco, name, len(self))

    # ---- files

    @classmethod
    def from_results(cls, lines: list[ResultLine], categories: list[dict], config: Config,
                     run_info: dict | None = None, labelled: np.ndarray | None = None) -> "Scores":
        """The scored pool of in-memory result lines (:func:`det_al.run.pool_run.score_in_memory`),
        assembled as ``det-al score`` assembles them on disk (:func:`det_al.run.assemble.assemble`).
        ``run_info`` goes into :attr:`run` (``image_root`` among it); ``labelled`` ``[M, D]``:
        the labelled set's embeddings, for ``novelty``."""
        a = assemble(lines, categories, config, run_info, labelled)
        return cls(a.ranking, a.pseudo_labels, a.skipped, a.embeddings, a.embedding_ids, a.passes,
                   labelled_embeddings=labelled, run=a.run)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Scores":
        """Read the outputs of ``det-al score`` (or :meth:`save`): a folder, or its ``ranking.jsonl``
        (the other files are read beside it). ``passes.jsonl`` is not read (large)."""
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
        write_json(out / "run.json", self.run, indent=1)
        return out


@dataclass(frozen=True)
class Selection:
    """A batch chosen from a ranking: :attr:`coco` is the ``selection.json`` COCO dict (the
    chosen images in rank order, each with ``rank`` and ``informativeness``, their pseudo-labels
    and the categories); :attr:`image_root` the folder of the images, from the scores (kept in
    the COCO dict's ``info``, so ``selection.json`` remembers it too)."""

    coco: dict
    strategy: str = "top"
    n_ranked: int | None = None

    @property
    def image_root(self) -> Path | None:
        root = (self.coco.get("info") or {}).get("image_root")
        return Path(root) if root else None

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
        return cls(load_coco(path))
