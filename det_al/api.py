"""The public Python API: score the model you hold, select a batch, export it for annotators.

>>> import det_al                                                      # doctest: +SKIP
>>> scores = det_al.score_images(model, "pool/", passes=10, seed=0)   # doctest: +SKIP
>>> batch = det_al.select(scores, "top", budget=50)                    # doctest: +SKIP
>>> det_al.export_label_studio(batch, "ls/", url_prefix="https://host/pool")  # doctest: +SKIP

The results are :class:`~det_al.scores.Scores` and :class:`~det_al.scores.Selection`; the
exporters live in :mod:`det_al.annotation.export`, the importers in
:mod:`det_al.annotation.imports`, :func:`~det_al.annotation.merge.merge` in
:mod:`det_al.annotation.merge`; ``det_al/__init__.py`` lists the public names once.
``det-al score``, ``select``, ``export``, ``import`` and ``merge`` are thin layers over them. Every problem
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
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from det_al.config import Config, config_from_dict, load_config, override_config, passes_overrides
from det_al.data.files import read_json, remove_earlier_outputs, write_json
from det_al.data.sources import PoolSource, pool_source
from det_al.errors import InputError
from det_al.inference import dropout as mc
from det_al.models.build import model_family, model_num_classes
from det_al.models.checkpoint import load_checkpoint
from det_al.models.device import check_device
from det_al.run.checks import check_run
from det_al.run.ensemble import check_members, members_sha256
from det_al.run.info import run_info
from det_al.run.labelled import labelled_embeddings
from det_al.run.pool_run import score_in_memory, score_to_dir
from det_al.run.sizes import pool_with_true_sizes, stale_sizes
from det_al.run.stream import SHARDS, refuse_existing_results
from det_al.scores import Scores, Selection

logger = logging.getLogger(__name__)

# The per-module dicts of hooks that torch.nn.Module keeps (those a torch version lacks are skipped).
_HOOK_DICTS = (
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)


# --------------------------------------------------------------------------- the model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The detector inside ``DataParallel``/``DistributedDataParallel``/``torch.compile`` wrappers,
    checked to be of a supported family (:func:`det_al.models.build.model_family`)."""
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
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
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
    model, config, categories, _ = load_checkpoint(checkpoint, None if config is None else as_config(config), device)
    return LoadedModel(model, config, categories or None)


@contextlib.contextmanager
def mc_dropout(model: nn.Module, rate: float | Sequence[float] = 0.1, sites: Sequence[str] | None = None,
               seed: int | None = None, groups: int = 0) -> Iterator[Any]:
    """MC dropout on ``model`` for the ``with`` block, for your own loops; removed on exit.

    Dropout with probability ``rate`` is applied to the *input* of each module in ``sites``
    (default: the family's heads, see :data:`det_al.inference.dropout.DEFAULT_SITES`) while the model stays
    in whatever mode it is in; weights are never changed. ``seed`` seeds the masks (default: the
    global RNG); ``groups`` > 0 keeps or drops the input's channels in that many groups, one draw
    per group for all positions (``passes.dropout_groups``). Yields the
    :class:`det_al.inference.dropout.MCDropout` control.

    >>> with det_al.mc_dropout(model, 0.2, seed=0):  # doctest: +SKIP
    ...     detections = model(images)
    """
    model = unwrap_model(model)
    if sites is None:
        sites = mc.default_sites(model_family(model), model)
    generator = None if seed is None else torch.Generator(device=model_device(model)).manual_seed(int(seed))
    with mc.mc_dropout(model, tuple(sites), rate, [generator], groups) as control:
        yield control


# --------------------------------------------------------------------------- scoring


def score_images(
    model: nn.Module | LoadedModel | Sequence[nn.Module | LoadedModel], images: Any, *, categories: Sequence[dict | str] | None = None,
    passes: int | None = None, dropout: float | Sequence[float] | None = None, tta: str | Sequence[str] | None = None,
    seed: int | None = None, batch_size: int | None = None, device: str | torch.device | None = None,
    config: Config | Mapping | str | os.PathLike | None = None, image_root: str | os.PathLike | None = None,
    labelled: Any = None, labelled_root: str | os.PathLike | None = None,
    reference: Scores | Mapping | str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
    amp: bool = False, progress: bool = True, allow_outside_root: bool = False,
    extra_info: Mapping[str, Any] | None = None,
) -> Scores:
    """Rank ``images`` by how informative they are to label, with the detector ``model``.

    Args:
        model: a torchvision Faster/Mask R-CNN, RetinaNet, FCOS or SSD (``DataParallel`` and
            the like are unwrapped) in any mode: it runs in ``eval()`` with MC dropout hooks,
            and its mode, hooks and device are restored afterwards. Or :func:`load_model`'s
            result: its config and categories are used unless ``config`` / ``categories`` are given.
            Or a list of such models of one family and class count, an ensemble
            (:mod:`det_al.run.ensemble`): ``M`` members x ``T`` passes scored together (``passes=1,
            dropout=0``: a plain ensemble); pseudo-labels, embeddings, dense signals, config and
            categories are the first member's.
        images: a folder, a COCO file or dict, a list of paths, PIL images, ``[H, W, 3]`` uint8
            arrays or ``[3, H, W]`` float tensors in [0, 1], or a ``Dataset`` of them (:func:`pool_source`).
        categories: one per class of the model (label ``l`` is ``categories[l - 1]``), COCO dicts
            or names; default: the COCO input's, else ``class_1`` ... ``class_{C-1}``.
        passes, dropout, tta, seed, batch_size: the config's ``passes`` section (``dropout``: one
            rate or one per pass; ``tta``: e.g. ``["hflip"]``).
        device: where to run; ``None``: the model's own device (the model is never moved).
        config: a :class:`Config`, its plain data or a YAML file; default: det_al's defaults.
        image_root: the folder the file names of a COCO input or a list of paths are relative
            to; the scores remember the root used (:attr:`Scores.image_root`), the exporters
            and the report default to it.
        labelled: the labelled set, a COCO file or dict (images under ``labelled_root``) or its
            ``[M, D]`` embeddings: each image gets its ``novelty``; :func:`select` then defaults
            to ``class-balanced:fused`` (a COCO set's objects per class are kept) or ``fused``.
        reference: an earlier scored pool (:class:`Scores`, its folder or ``run.json``): each
            informativeness is the value it would have had there, so tomorrow's batch compares
            with it; without it, values are ranks among ``images`` (one image alone scores 1).
        out_dir: also stream per-image results there and write the files of ``det-al score``
            (``resume``: an interrupted run goes on; results there are refused without it or
            ``overwrite``).
        amp, progress: mixed precision (CUDA); a progress bar.
        allow_outside_root: read COCO ``file_name`` entries that escape ``image_root`` (absolute
            paths, ``../``), refused by default: a COCO file must not make det_al read any file.
        extra_info: more entries for ``run.json`` (``det-al score`` records its checkpoint).

    Returns:
        :class:`Scores`, most informative first. Images that cannot be read are in ``.skipped``.

    Raises:
        InputError: before anything is scored or written, for a device this machine lacks, an
            unsupported model or ensemble, categories that do not fit it, a malformed config or
            pool, or an in-memory image of the wrong kind.
    """
    _refuse_before_scoring(out_dir, resume, overwrite, device)
    models, config, categories, member_categories = _members_config_categories(model, config, categories, dict(
        passes=passes, dropout=dropout, tta=tta, seed=seed, batch_size=batch_size))
    model = models[0]
    check_members(models, categories=member_categories, sites=config.passes.sites)
    source = pool_source(images, image_root)
    run_device = str(model_device(model) if device is None else check_device(device))
    with contextlib.ExitStack() as preserved:
        for member in models:
            preserved.enter_context(preserved_model(member))
        categories = check_run(model, source.pool["images"], source.file_root, categories=categories,
                               pool_categories=source.pool.get("categories"), allow_outside_root=allow_outside_root,
                               pool_source=source.path, categories_source="categories", passes=config.passes)
        embedded = None if labelled is None else labelled_embeddings(
            labelled, model, labelled_root, run_device, allow_outside_root)
        info = {**run_info(source, run_device, labelled, members=len(models)), **(extra_info or {})}
        if reference is not None:
            info["rank_reference"] = read_rank_reference(reference)
        if out_dir is None:
            lines = score_in_memory(models, config, categories, source.pool["images"], source.image_root,
                                    device=run_device, amp=amp, progress=progress, make_dataset=source.make_dataset)
            return _note_stale_sizes(Scores.from_results(lines, categories, config, info, embedded), source, None)
        _score_into(Path(out_dir), models, config, categories, source, info, embedded, resume=resume,
                    overwrite=overwrite, device=run_device, amp=amp, progress=progress)
    return _note_stale_sizes(Scores.load(out_dir), source, Path(out_dir))


def _score_into(out_dir: Path, models: list[nn.Module], config: Config, categories: list[dict], source: PoolSource,
                info: dict, embedded: np.ndarray | None, *, overwrite: bool, **run: Any) -> None:
    """The resumable run of the ensemble ``models`` (one model: a list of one) into ``out_dir``
    (:func:`det_al.run.pool_run.score_to_dir`), after removing an overwritten run's shards and
    writing a folder pool's ``pool.json``."""
    if overwrite:  # a torchrun run's shards would sit beside this run's results
        remove_earlier_outputs([out_dir / SHARDS])
    if source.folder_coco is not None:
        write_json(out_dir / "pool.json", source.folder_coco, indent=1)
    score_to_dir(models, config, categories, source.pool, source.image_root, out_dir,
                 members_sha256([model_sha256(m) for m in models]),
                 overwrite=overwrite, run_info=info, make_dataset=source.make_dataset, labelled_embeddings=embedded,
                 **run)


def _refuse_before_scoring(out_dir, resume: bool, overwrite: bool, device) -> None:
    """The checks of :func:`score_images` that need no model: ``resume`` without ``out_dir``, a
    device this machine lacks, a folder holding results without ``resume``/``overwrite``."""
    if resume and out_dir is None:
        raise InputError("resume=True needs out_dir (the folder of the interrupted run)")
    if device is not None:  # a device this machine lacks: before anything is written
        check_device(device)
    if out_dir is not None and not resume and not overwrite:
        refuse_existing_results(out_dir)


def _members_config_categories(model, config, categories, shortcuts: dict) -> tuple[list[nn.Module], Config, Any, list]:
    """The detectors of an ensemble (one model: a list of one; unwrapped), the config with the
    ``shortcuts`` of the passes section applied (:func:`~det_al.config.passes_overrides`), the
    categories (those given, else the first :class:`LoadedModel`'s own) and each member's own
    categories (``None`` where unknown), for :func:`det_al.run.ensemble.check_members`."""
    members = list(model) if isinstance(model, (list, tuple)) and not isinstance(model, LoadedModel) else [model]
    if not members:
        raise InputError("model: an empty list of models (an ensemble needs at least one)")
    if isinstance(members[0], LoadedModel):  # load_model's result: its config and categories unless given
        config = members[0].config if config is None else config
        categories = members[0].categories if categories is None else categories
    member_categories = [m.categories if isinstance(m, LoadedModel) else None for m in members]
    models = [unwrap_model(m.model if isinstance(m, LoadedModel) else m) for m in members]
    config = override_config(as_config(config, model_num_classes(models[0])), passes_overrides(**shortcuts), "score_images")
    return models, config, categories, member_categories


def _note_stale_sizes(scores: Scores, source: PoolSource, out_dir: Path | None) -> Scores:
    """Say once, at the end of the run, which pool images record a size that is not their file's
    (:mod:`det_al.run.sizes`); keep them in ``run.json`` (``stale_sizes``) and, for a COCO pool
    scored into a folder, write ``pool.json`` there with the true sizes."""
    if source.folder_coco is not None or source.make_dataset is not None:
        return scores
    stale = stale_sizes(source.pool["images"], scores.images)  # not pseudo_labels(): a deep copy
    if not stale:
        return scores
    scores.run["stale_sizes"] = stale
    fixed = ""
    if out_dir is not None:
        write_json(out_dir / "pool.json", pool_with_true_sizes(source.pool, stale), indent=1)
        write_json(out_dir / "run.json", scores.run, indent=1)
        fixed = f"; {out_dir / 'pool.json'} is the pool with the true sizes: use it from now on (det-al merge --pool)"
    first = stale[0]
    logger.warning(
        "%d pool images record a size that is not their file's (stale, or taken before EXIF rotation; first: %s, "
        "%dx%d in the pool, %dx%d the file): the scores use the files' sizes%s; all are listed in run.json "
        "(stale_sizes)", len(stale), first["file_name"], *first["pool"], *first["file"], fixed)
    return scores


def read_rank_reference(reference: Scores | Mapping | str | os.PathLike) -> dict:
    """The ``rank_reference`` of a scored pool (:class:`Scores`, a ``det-al score`` folder or its
    ``run.json``, or the reference itself), checked; an :class:`InputError` names what is wrong."""
    where = None
    if isinstance(reference, Scores):
        data = reference.run.get("rank_reference")
    elif isinstance(reference, Mapping):
        data = reference.get("rank_reference", reference) if "fields" not in reference else reference
    else:
        where = Path(reference) / "run.json" if Path(reference).is_dir() else Path(reference)
        if not where.is_file():
            raise InputError("no run.json of a det-al score run here", reference)
        from_file = read_json(where)
        data = from_file.get("rank_reference") if isinstance(from_file, dict) else None
    if not isinstance(data, Mapping) or not isinstance(data.get("fields"), Mapping) or not data.get("n"):
        raise InputError("the reference has no rank_reference (a run of det_al before it kept one, or "
                         "scoring.image_combination is not rank): score that pool again", where)
    return dict(data)


# --------------------------------------------------------------------------- selection


def select(
    scores: Scores | str | os.PathLike,
    strategy: Any = None,
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
    ``top:box``), ``random``, ``fused`` (reciprocal-rank fusion of informativeness and
    novelty), ``diverse`` (k-center over embeddings among the ``pre_factor x budget`` most
    informative; ``labelled_embeddings`` ``[L, D]`` counts as already covered),
    ``class-balanced`` (the rarest class of the labelled set first; ``class-balanced:fused``
    fills each class by the fusion), or a callable ``strategy(records, budget, budget_boxes,
    **context)``; ``None``: ``class-balanced:fused`` when the scores were scored with a labelled
    COCO set (``labelled=``: novelty and its objects per class), ``fused`` with novelty alone,
    else ``top`` (:func:`det_al.selection.strategies.default_strategy`). ``budget`` caps images,
    ``budget_boxes`` predicted boxes; give at least one. The selection keeps the scores'
    image root (:attr:`Selection.image_root`), which the exporters default to.
    """
    if not isinstance(scores, Scores):
        scores = Scores.load(scores)
    return scores.select(strategy, budget=budget, budget_boxes=budget_boxes, seed=seed, pre_factor=pre_factor,
                         labelled_embeddings=labelled_embeddings, **context)
