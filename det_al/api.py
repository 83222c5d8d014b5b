"""The public Python API: score the model you hold, select a batch, export it for annotators.

>>> import det_al                                                      # doctest: +SKIP
>>> scores = det_al.score_images(model, "pool/", passes=10, seed=0)   # doctest: +SKIP
>>> batch = det_al.select(scores, "top", budget=50)                    # doctest: +SKIP
>>> det_al.export_label_studio(batch, "ls/", url_prefix="https://host/pool")  # doctest: +SKIP

``det-al score``, ``select`` and ``export`` are thin layers over these functions. Every problem
with the input (an unsupported model, categories that do not fit it, a bad image, a malformed
file) is an :class:`~det_al.errors.InputError` raised before the first image is scored.

The model is the user's and is left as it was found: :func:`score_images` runs it in
``eval()`` mode and restores every submodule's ``training`` flag, its hooks and the device of
every parameter and buffer afterwards, also after an error or ``KeyboardInterrupt``
(:func:`preserved_model`). Its weights are never changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from det_al.config import Config, config_from_dict, load_config, override_config, passes_overrides
from det_al.errors import InputError
from det_al.files import atomic_open, read_json, write_json, write_jsonl

logger = logging.getLogger(__name__)

# The per-module dicts of hooks that torch.nn.Module keeps (those a torch version lacks are skipped).
_HOOK_DICTS = (
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)
#: Ranking fields an :class:`ImageScore` lists as its components (those a record has).
COMPONENT_FIELDS = ("class", "box", "mask", "presence", "novelty")


# --------------------------------------------------------------------------- the model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The detector inside ``DataParallel``/``DistributedDataParallel``/``torch.compile`` wrappers,
    checked to be of a supported family (:func:`det_al.models.model_family`)."""
    from det_al.models import model_family

    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            break
    if not isinstance(model, nn.Module):
        raise InputError(f"model: expected a torchvision detector (nn.Module), got {type(model).__name__}")
    try:
        model_family(model)
    except ValueError as e:
        raise InputError(f"model: {e}") from None
    return model


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model without either."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def preserved_model(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in ``eval()`` mode for the block; afterwards restore exactly what it was.

    Recorded on entry and restored on exit, also after an exception or ``KeyboardInterrupt``:
    the ``training`` flag of every submodule, every hook dict of every submodule (hooks added in
    the block are removed, hooks removed are put back), and the device of every parameter and
    buffer (a model moved in the block is moved back; its values are not touched).
    """
    modules = list(model.modules())
    training = [m.training for m in modules]
    hooks = [{name: dict(getattr(m, name)) for name in _HOOK_DICTS if isinstance(getattr(m, name, None), dict)}
             for m in modules]
    devices = [(m, kind, name, t.device) for m in modules for kind in ("_parameters", "_buffers")
               for name, t in getattr(m, kind).items() if t is not None]
    model.eval()
    try:
        yield model
    finally:
        for m, kind, name, device in devices:
            tensor = getattr(m, kind).get(name)
            if tensor is not None and tensor.device != device:
                if kind == "_parameters":
                    tensor.data = tensor.data.to(device)
                else:
                    m._buffers[name] = tensor.to(device)
        for m, saved in zip(modules, hooks):
            for name, entries in saved.items():
                current = getattr(m, name)
                if dict(current) != entries:
                    current.clear()
                    current.update(entries)
        for m, flag in zip(modules, training):
            m.training = flag


def model_sha256(model: nn.Module) -> str:
    """Hash of the model's class and state dict (names, dtypes, shapes, values): the run key of
    resumable scoring for a model that has no checkpoint file."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class LoadedModel(NamedTuple):
    """What :func:`load_model` returns (unpacks as ``model, config, categories``)."""

    model: nn.Module
    config: Config
    categories: list[dict] | None


def as_config(config: Config | Mapping | str | os.PathLike | None, num_classes: int = 0) -> Config:
    """A :class:`Config` from a Config, plain data (as YAML gives it) or a YAML file; ``None``
    gives the defaults (with ``model.num_classes`` set to ``num_classes`` for the record)."""
    if config is None:
        return config_from_dict({"model": {"num_classes": num_classes}} if num_classes else {}, "config")
    if isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        return config_from_dict(config, "config")
    return load_config(config)


def load_model(checkpoint: str | os.PathLike, config: Config | Mapping | str | os.PathLike | None = None,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Load a det_al checkpoint (or a torchvision state dict with ``config``), in ``eval()`` on ``device``.

    Returns ``(model, config, categories)``; ``categories`` is ``None`` for a plain state dict
    (give them to :func:`score_images`, or they come from the pool).
    """
    from det_al.checkpoint import load_checkpoint

    model, config, categories, _ = load_checkpoint(checkpoint, None if config is None else as_config(config), device)
    return LoadedModel(model, config, categories or None)


@contextlib.contextmanager
def mc_dropout(model: nn.Module, rate: float | Sequence[float] = 0.1, sites: Sequence[str] | None = None,
               seed: int | None = None) -> Iterator[Any]:
    """MC dropout on ``model`` for the ``with`` block, for your own loops; removed on exit.

    Dropout with probability ``rate`` is applied to the *input* of each module in ``sites``
    (default: the family's heads, see :data:`det_al.dropout.DEFAULT_SITES`) while the model stays
    in whatever mode it is in; weights are never changed. ``seed`` seeds the masks (default: the
    global RNG). Yields the :class:`det_al.dropout.MCDropout` control.

    >>> with det_al.mc_dropout(model, 0.2, seed=0):  # doctest: +SKIP
    ...     detections = model(images)
    """
    from det_al import dropout
    from det_al.models import model_family

    model = unwrap_model(model)
    if sites is None:
        sites = dropout.default_sites(model_family(model), model)
    generator = None if seed is None else torch.Generator(device=model_device(model)).manual_seed(int(seed))
    with dropout.mc_dropout(model, tuple(sites), rate, [generator]) as control:
        yield control


# --------------------------------------------------------------------------- scores


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
        """What the selection strategies may use (see :mod:`det_al.strategies`)."""
        from det_al.strategies import classes_from_annotations

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
        """:func:`select` on these scores."""
        return select(self, strategy, **kwargs)

    # ---- files

    @classmethod
    def from_results(cls, results: list[dict], categories: list[dict], config: Config) -> "Scores":
        """Scores from in-memory result lines (:func:`det_al.scoring.iter_results`), holding what
        :func:`det_al.assemble.assemble_outputs` would write for them."""
        from det_al import __version__
        from det_al.scoring import records_from_results

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
        from det_al.selection import read_ranking, selection_context

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


def score_images(
    model: nn.Module,
    images: Any,
    *,
    categories: Sequence[dict | str] | None = None,
    passes: int | None = None,
    dropout: float | Sequence[float] | None = None,
    tta: str | Sequence[str] | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    config: Config | Mapping | str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Scores:
    """Rank ``images`` by how informative they are to label, with the detector ``model``.

    Args:
        model: a torchvision Faster/Mask R-CNN, RetinaNet, FCOS or SSD (wrappers such as
            ``DataParallel`` are unwrapped), in any mode: it runs in ``eval()`` with MC dropout
            hooks, and its mode, hooks and device are restored afterwards.
        images: a folder, a COCO file or dict, a list of paths, of PIL images, of ``[H, W, 3]``
            uint8 arrays or of float ``[3, H, W]`` tensors in [0, 1], or a torch ``Dataset`` of
            such images (see :func:`det_al.sources.pool_source`).
        categories: one per class of the model (label ``l`` is ``categories[l - 1]``), COCO dicts
            or names; default: the COCO input's, else ``class_1`` ... ``class_{C-1}``.
        passes, dropout, tta, seed, batch_size: shortcuts for the ``passes`` section of the
            config (``dropout``: one rate or one per pass; ``tta``: e.g. ``["hflip"]``).
        device: where to run; ``None``: the model's own device (the model is never moved).
        config: a :class:`Config`, its plain data or a YAML file (``passes``, ``matching``,
            ``scoring``); default: det_al's defaults.
        image_root: the folder the file names of a COCO input or a list of paths are relative to.
        out_dir: also stream per-image results there and write the files of ``det-al score``;
            with ``resume`` an interrupted run continues where it stopped (same model, config, pool).
        progress: a progress bar.

    Returns:
        :class:`Scores`, most informative first. Images that cannot be read are in ``.skipped``.

    Raises:
        InputError: before anything is scored, for an unsupported model, categories that do not
            fit it, a malformed config or pool, or an in-memory image of the wrong kind.
    """
    from det_al.models import model_num_classes
    from det_al.scoring import iter_results, score_to_dir
    from det_al.sources import load_pool, pool_source, resolve_categories

    model = unwrap_model(model)
    num_classes = model_num_classes(model)
    config = override_config(
        as_config(config, num_classes),
        passes_overrides(passes=passes, dropout=dropout, tta=tta, seed=seed, batch_size=batch_size),
        "score_images",
    )
    if out_dir is not None and not resume:
        from det_al.results import refuse_existing_results

        refuse_existing_results(out_dir)
    if out_dir is not None and isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        source = load_pool(images, image_root, save_folder_pool=Path(out_dir) / "pool.json")
    else:
        source = pool_source(images, image_root)
    categories = resolve_categories(categories, num_classes, source.pool.get("categories"), "categories")
    run_device = model_device(model) if device is None else torch.device(device)
    with preserved_model(model):
        if out_dir is not None:
            info = {"device": str(run_device), "threads_per_process": torch.get_num_threads()}
            score_to_dir(
                model, config, categories, source.pool, source.image_root, out_dir, model_sha256(model),
                resume=resume, device=str(run_device), progress=progress, run_info=info,
                make_dataset=source.make_dataset,
            )
            return Scores.load(out_dir)
        results: list[dict] = []
        for lines in iter_results(model, config, categories, source.pool["images"], source.image_root,
                                  device=str(run_device), progress=progress, make_dataset=source.make_dataset):
            results.extend(lines)
    return Scores.from_results(results, categories, config)


# --------------------------------------------------------------------------- selection


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
        from det_al.coco import load_coco

        return cls(load_coco(path))


def select(
    scores: Scores | str | os.PathLike,
    strategy: Any = "top",
    *,
    budget: int | None = None,
    budget_boxes: int | None = None,
    seed: int = 0,
    pre_factor: float = 3.0,
    labelled_embeddings: np.ndarray | str | os.PathLike | None = None,
    **context: Any,
) -> Selection:
    """Choose a batch to label from ``scores`` (:class:`Scores` or a ``det-al score`` folder).

    ``strategy``: ``top`` (most informative), ``top:KEY`` (by one ranking field, e.g.
    ``top:box``), ``random``, ``diverse`` (k-center over embeddings among the ``pre_factor x
    budget`` most informative; ``labelled_embeddings`` ``[L, D]`` counts as already covered),
    ``class-balanced``, or a callable ``strategy(records, budget, budget_boxes, **context)``.
    ``budget`` caps images, ``budget_boxes`` predicted boxes; give at least one.
    """
    from det_al.selection import select_batch

    if not isinstance(scores, Scores):
        scores = Scores.load(scores)
    where = scores.source / "pseudo_labels.json" if scores.source else None
    coco = select_batch(
        scores.ranking, scores._pseudo_labels, budget, strategy, where, budget_boxes=budget_boxes,
        seed=seed, pre_factor=pre_factor, **scores.strategy_context(labelled_embeddings), **context,
    )
    name = strategy if isinstance(strategy, str) else getattr(strategy, "__name__", "custom")
    return Selection(coco, name, len(scores))


# --------------------------------------------------------------------------- export


def _selection_coco(selection: Selection | Mapping | str | os.PathLike) -> tuple[dict, str | None]:
    """The selection's COCO dict and its file (for errors), each image checked to have a size."""
    from det_al.coco import load_coco

    if isinstance(selection, Selection):
        coco, where = selection.coco, None
    elif isinstance(selection, Mapping):
        coco, where = dict(selection), None
    else:
        coco, where = load_coco(selection), os.fspath(selection)
    for image in coco["images"]:
        if "width" not in image or "height" not in image:
            raise InputError(f"image {image['id']} has no width/height", where)
    return coco, where


@dataclass(frozen=True)
class LabelStudioExport:
    """What :func:`export_label_studio` made: the tasks (one per image, rank order), the labeling
    config XML, and the files written (``{"tasks": path, "labeling_config": path}``, empty when
    nothing was written)."""

    tasks: list[dict]
    labeling_config: str
    files: dict[str, Path] = field(default_factory=dict)


def export_label_studio(
    selection: Selection | Mapping | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    local_files_root: str | os.PathLike | None = None,
    url_prefix: str | None = None,
    cloud_prefix: str | None = None,
    image_url: Callable[[dict], str] | None = None,
    image_root: str | os.PathLike | None = None,
    model_version: str = "det_al",
    shapes: str = "polygons",
    polygon_tolerance: float = 0.0,
) -> LabelStudioExport:
    """Label Studio tasks with the model's detections as predictions, and the labeling config.

    Image URLs come from exactly one of ``local_files_root`` (Label Studio's local-files document
    root; needs ``image_root``), ``url_prefix`` (http(s)), ``cloud_prefix`` (``s3://``, ``gs://``,
    ``azure-blob://``) or ``image_url(image_dict) -> str``. With ``image_root`` every image's
    size is checked against the file (after EXIF rotation). ``shapes``: ``polygons`` (masks
    traced as polygons) or ``boxes``. With ``out_dir``, writes ``tasks.json`` and
    ``labeling_config.xml`` there.
    """
    from det_al import label_studio
    from det_al.files import write_text
    from det_al.selection import check_image_sizes

    coco, where = _selection_coco(selection)
    url = label_studio.image_url_function(local_files_root=local_files_root, url_prefix=url_prefix,
                                          cloud_prefix=cloud_prefix, image_url=image_url, image_root=image_root)
    if shapes not in ("polygons", "boxes"):
        raise InputError(f"shapes must be polygons or boxes, got {shapes!r}")
    check_image_sizes(coco, image_root)
    polygons = shapes == "polygons" and label_studio.has_masks(coco)
    try:
        tasks = label_studio.selection_to_tasks(coco, url, model_version, polygons=polygons, tolerance=polygon_tolerance)
    except ValueError as e:
        raise InputError(str(e), where) from e
    config = label_studio.labeling_config(coco["categories"], polygons=polygons)
    files: dict[str, Path] = {}
    if out_dir is not None:
        out = Path(out_dir)
        write_json(out / "tasks.json", tasks, indent=1)
        write_text(out / "labeling_config.xml", config)
        files = {"tasks": out / "tasks.json", "labeling_config": out / "labeling_config.xml"}
    return LabelStudioExport(tasks, config, files)


@dataclass(frozen=True)
class CvatExport:
    """What :func:`export_cvat` wrote: the "CVAT for images 1.1" XML, the "COCO 1.0" dict, the
    image paths in rank order, the label spec, and the files (``annotations``, ``coco``,
    ``coco_zip``, ``images``, ``labels``)."""

    xml: str
    coco: dict
    images: list[str]
    labels: list[dict]
    files: dict[str, Path]


def export_cvat(
    selection: Selection | Mapping | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    frame_names: str = "basename",
    shapes: str = "mask",
    polygon_tolerance: float = 0.0,
    task_name: str = "det_al selection",
) -> CvatExport:
    """CVAT pre-annotations for a selection, written into ``out_dir``: ``annotations.xml``,
    ``coco.zip`` (and ``coco/annotations/instances_default.json``), ``images.txt`` (the images in
    rank order: create the task with sorting ``predefined``) and ``cvat_labels.json``.

    ``frame_names``: ``basename`` (local upload) or ``path`` (share or cloud storage); ``shapes``:
    ``mask``, ``polygon`` or ``box``. With ``image_root`` the sizes are checked against the files.
    """
    import json
    import zipfile

    from det_al import cvat
    from det_al.files import write_text
    from det_al.selection import check_image_sizes

    coco, where = _selection_coco(selection)
    check_image_sizes(coco, image_root)
    try:
        names = cvat.frame_names(coco["images"], frame_names)
        xml = cvat.selection_to_cvat_xml(coco, names, shapes, task_name, polygon_tolerance)
    except ValueError as e:
        raise InputError(str(e), where) from e
    cvat_coco = cvat.selection_to_cvat_coco(coco, names)
    paths = [os.path.join(image_root, im["file_name"]) if image_root else im["file_name"] for im in coco["images"]]
    labels = cvat.cvat_labels_spec(coco["categories"])
    out = Path(out_dir)
    files = {"annotations": out / "annotations.xml", "coco": out / "coco" / "annotations" / "instances_default.json",
             "coco_zip": out / "coco.zip", "images": out / "images.txt", "labels": out / "cvat_labels.json"}
    write_text(files["annotations"], xml)
    # COCO 1.0 in the layout CVAT exports and datumaro expects, also zipped for upload
    write_json(files["coco"], cvat_coco)
    with atomic_open(files["coco_zip"], "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("annotations/instances_default.json", json.dumps(cvat_coco))
    write_text(files["images"], "".join(p + "\n" for p in paths))
    write_json(files["labels"], labels, indent=1)
    return CvatExport(xml, cvat_coco, paths, labels, files)


__all__ = [
    "CvatExport",
    "ImageScore",
    "LabelStudioExport",
    "LoadedModel",
    "Scores",
    "Selection",
    "export_cvat",
    "export_label_studio",
    "load_model",
    "mc_dropout",
    "model_device",
    "preserved_model",
    "score_images",
    "select",
    "unwrap_model",
]
