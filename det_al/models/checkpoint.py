"""det_al checkpoints: weights, config and categories in one ``weights_only`` file.

A det_al checkpoint is a plain dict written with ``torch.save``::

    {"format": "det_al/1",
     "state_dict": {...},          # model.state_dict()
     "config": {...},              # det_al.config.config_to_dict(config)
     "categories": [{"id": 7, "name": "cat", ...}, ...],   # label l >= 1 is categories[l - 1]
     "extra": {...}}               # optional: epoch, optimizer state, metrics (plain data)

It holds only tensors and plain Python containers, so it loads with
``torch.load(path, map_location="cpu", weights_only=True)``.

:func:`load_checkpoint` also accepts a *plain torchvision state dict* (a user's own
checkpoint: ``torch.save(model.state_dict(), path)``, or the ``{"model": state_dict, ...}``
files that torchvision's ``references/detection/train.py`` writes). Such a file holds no
config and no categories: the caller passes ``config`` (required) and ``categories`` (the
user's COCO categories in label order, e.g. the ``categories`` of the pool or training COCO
file; without them an empty list is returned).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from det_al.config import Config, config_from_dict, config_to_dict
from det_al.errors import InputError
from det_al.data.files import atomic_open
from det_al.models.build import build_model, model_family

logger = logging.getLogger(__name__)

FORMAT = "det_al/1"


def label_to_category_id(categories: list[dict]) -> dict[int, int]:
    """Model label -> COCO category id: label ``l`` (>= 1) is ``categories[l - 1]["id"]``."""
    return {label: int(c["id"]) for label, c in enumerate(categories, start=1)}


def category_id_to_label(categories: list[dict]) -> dict[int, int]:
    """COCO category id -> model label (the inverse of :func:`label_to_category_id`)."""
    return {int(c["id"]): label for label, c in enumerate(categories, start=1)}


def _check_categories(categories: Any, num_classes: int, path: str | None, what: str) -> list[dict]:
    """Plain copies of ``categories``, checked: dicts with distinct integer ``id``, one per class."""
    if not isinstance(categories, (list, tuple)):
        raise InputError(f"{what} categories must be a list, got {type(categories).__name__}", path)
    out = []
    for i, c in enumerate(categories):
        if not isinstance(c, Mapping) or isinstance(c.get("id"), bool) or not isinstance(c.get("id"), int):
            raise InputError(f"{what} category {i} must be a dict with an integer 'id', got {c!r}", path)
        out.append(dict(c))
    ids = [c["id"] for c in out]
    if len(set(ids)) != len(ids):
        raise InputError(f"{what} categories have duplicate ids: {ids}", path)
    names = [c["name"] for c in out if "name" in c]
    repeated = sorted({n for n in names if names.count(n) > 1}, key=names.index)
    if repeated:
        raise InputError(f"{what} categories have duplicate names: {repeated[0]!r} more than once", path)
    if len(out) != num_classes - 1:
        raise InputError(
            f"{what} has {len(out)} categories but model.num_classes is {num_classes} "
            f"(categories + background must equal num_classes)",
            path,
        )
    return out


_PLAIN = (Tensor, int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def _check_plain(value: Any, where: str) -> None:
    """Raise ``TypeError`` naming the first value under ``where`` that ``weights_only`` cannot load."""
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple, set)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, (dict, Mapping)):
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool, type(None))):
                raise TypeError(f"{where} has a key of type {type(k).__name__}; checkpoints hold plain data only")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}; checkpoints hold only tensors, numbers, strings, "
        "lists and dicts (they load with weights_only=True)"
    )


class CheckpointWriteError(InputError):
    """Writing a checkpoint failed (a full disk, a folder that cannot be written): the file at the
    path, if any, is the previous one, whole (the write goes to a temporary name)."""


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    config: Config,
    categories: list[dict],
    extra: dict | None = None,
) -> None:
    """Write ``model``'s weights, ``config`` and ``categories`` to ``path`` atomically.

    ``categories`` are the user's COCO categories in label order (label ``l`` >= 1 is
    ``categories[l - 1]``); ``extra`` is plain data (tensors, numbers, strings, lists, dicts:
    an optimizer's ``state_dict()`` qualifies) returned as is by :func:`load_checkpoint`;
    anything else in ``extra`` is a ``TypeError`` naming it, raised before anything is written.
    A failed write (a full disk) is a :class:`CheckpointWriteError`, and any previous ``path`` is kept.
    """
    categories = _check_categories(categories, config.model.num_classes, os.fspath(path), "save_checkpoint:")
    _check_plain(dict(extra or {}), "extra")
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "state_dict": state_dict,
        "config": config_to_dict(config),
        "categories": categories,
        "extra": dict(extra or {}),
    }
    try:
        with atomic_open(path, "wb") as f:
            torch.save(payload, f)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write (a full disk) as RuntimeError
        reason = getattr(e, "strerror", None) or re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", str(e).splitlines()[0])
        raise CheckpointWriteError(f"cannot write the checkpoint ({reason}); nothing half-written is left", path) from e


def _torch_load(path: str) -> Any:
    if not os.path.exists(path):
        raise InputError("checkpoint file not found", path)
    if os.path.isdir(path):
        raise InputError("checkpoint path is a directory, expected a file", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise InputError(
                f"not a loadable checkpoint: it holds a Python object ({found.group(1)}); det_al loads "
                "checkpoints with weights_only=True, so only tensors and plain containers are accepted",
                path,
            ) from e
        found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        reason = found.group(1).strip() if found else "unpickling failed"
        raise InputError(f"not a readable checkpoint (corrupt or not a torch file: {reason})", path) from e
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"not a readable checkpoint ({type(e).__name__}: {first})", path) from e
    except Exception as e:  # e.g. IndexError ("pop from empty list") for a plain text file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"not a readable checkpoint (corrupt or not a torch file: {type(e).__name__}: {first})", path) from e


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    )


def _plain_state_dict(obj: Any, path: str) -> dict[str, Tensor]:
    """The state dict of a user's torchvision checkpoint (bare, or under ``model``/``state_dict``)."""
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        for key in ("model", "state_dict", "model_state_dict"):
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
        else:
            raise InputError(
                "neither a det_al checkpoint nor a torchvision state dict "
                f"(top-level keys: {', '.join(map(str, list(obj)[:8]))})",
                path,
            )
    if not _is_state_dict(obj):
        raise InputError(
            f"neither a det_al checkpoint nor a torchvision state dict (got {type(obj).__name__})", path
        )
    # Models saved from nn.DataParallel / DistributedDataParallel prefix every key with "module."
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


# The first classification layer of each family: its rows are (anchors per location) x classes.
_CLASS_LAYER = {
    "rcnn": "roi_heads.box_predictor.cls_score.weight",
    "retinanet": "head.classification_head.cls_logits.weight",
    "fcos": "head.classification_head.cls_logits.weight",
    "ssd": "head.classification_head.module_list.0.weight",
}


def _stored_num_classes(model: nn.Module, state_dict: Mapping[str, Tensor], num_classes: int) -> int | None:
    """The class count the checkpoint's classification layer was built for, or None if unknown."""
    key = _CLASS_LAYER[model_family(model)]
    own = model.state_dict().get(key)
    theirs = state_dict.get(key)
    if own is None or theirs is None or own.ndim != theirs.ndim or own.ndim < 1:
        return None
    if tuple(own.shape[1:]) != tuple(theirs.shape[1:]):
        return None  # a different architecture, not a different class count
    anchors, rest = divmod(own.shape[0], num_classes)
    if rest or anchors == 0 or theirs.shape[0] % anchors:
        return None
    return theirs.shape[0] // anchors


def _load_weights(model: nn.Module, state_dict: Mapping[str, Tensor], path: str, name: str, num_classes: int) -> None:
    """Load ``state_dict`` strictly, turning any mismatch into one :class:`InputError` line."""
    own = model.state_dict()
    # BatchNorm's num_batches_tracked is absent from FrozenBatchNorm2d checkpoints (and vice versa).
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own and not k.endswith("num_batches_tracked")]
    shapes = [
        (k, tuple(state_dict[k].shape), tuple(v.shape))
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    where = f"does not fit model '{name}' with num_classes {num_classes}"
    theirs_classes = _stored_num_classes(model, state_dict, num_classes)
    if theirs_classes is not None and theirs_classes != num_classes:
        raise InputError(
            f"checkpoint has {theirs_classes} classes but config model.num_classes is {num_classes}", path
        )
    if shapes:
        k, theirs, ours = shapes[0]
        more = f" and {len(shapes) - 1} more" if len(shapes) > 1 else ""
        raise InputError(
            f"checkpoint {where}: shape mismatch for {k}: checkpoint {list(theirs)}, model {list(ours)}{more} "
            "(different class count or architecture?)",
            path,
        )
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise InputError(f"checkpoint {where}: {', '.join(parts)} (different architecture?)", path)
    try:
        model.load_state_dict(dict(state_dict), strict=False)
    except RuntimeError as e:
        raise InputError(f"checkpoint {where}: {str(e).splitlines()[0]}", path) from e


def load_checkpoint(
    path: str | os.PathLike,
    config: Config | None = None,
    device: str | torch.device = "cpu",
    categories: list[dict] | None = None,
) -> tuple[nn.Module, Config, list[dict], dict]:
    """Load a checkpoint into a freshly built model, in ``eval()`` mode on ``device``.

    Returns ``(model, config, categories, extra)``. For a det_al checkpoint the model is built
    from its stored config, or from ``config`` when given (then ``config`` must name the same
    architecture and class count; its other keys, e.g. score thresholds in ``model.options``
    or the passes, win). For a plain torchvision state dict ``config`` is required and
    ``categories`` come from the caller (see the module docstring); ``categories`` is ignored
    for det_al checkpoints, which carry their own.

    Every problem (missing, corrupt or foreign file, state dict that does not fit, class count
    that disagrees with the categories or the config) is an :class:`InputError` naming the file.
    """
    path = os.fspath(path)
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and "format" in obj:
        config, cats, state_dict, extra = _det_al_checkpoint(obj, config, path)
    else:
        config, cats, state_dict = _plain_checkpoint(obj, config, categories, path)
        extra = {}
    try:
        model = build_model(config.model)
    except InputError as e:
        if e.path is not None:
            raise
        raise InputError(f"cannot build the model: {e}", path) from e
    _load_weights(model, state_dict, path, config.model.name, config.model.num_classes)
    logger.info("loaded %s (%s, %d classes)", path, config.model.name, config.model.num_classes)
    return model.to(device).eval(), config, cats, extra


def _det_al_checkpoint(obj: Mapping, config: Config | None, path: str) -> tuple[Config, list[dict], Mapping, dict]:
    """``(config, categories, state_dict, extra)`` of a det_al checkpoint, each part checked;
    the config is ``config`` when given (checked against the stored one), else the stored one."""
    if obj.get("format") != FORMAT:
        raise InputError(f"unsupported checkpoint format {obj.get('format')!r} (expected {FORMAT!r})", path)
    for key in ("state_dict", "config", "categories"):
        if key not in obj:
            raise InputError(f"det_al checkpoint lacks '{key}'", path)
    if not isinstance(obj["config"], Mapping):
        raise InputError("det_al checkpoint 'config' is not a mapping", path)
    config = _checkpoint_config(obj["config"], config, path)
    if config.model.num_classes is None:
        raise InputError("det_al checkpoint's config has no model.num_classes", path)
    cats = _check_categories(obj["categories"], config.model.num_classes, path, "checkpoint")
    if not _is_state_dict(obj["state_dict"]):
        raise InputError("det_al checkpoint 'state_dict' is not a mapping of names to tensors", path)
    return config, cats, obj["state_dict"], dict(obj.get("extra") or {})


def _checkpoint_config(stored: Mapping, config: Config | None, path: str) -> Config:
    """The stored config, or ``config`` when given: then only the architecture must agree (the
    stored config's other keys may be from another det_al version and are not needed), and a
    ``num_classes`` of ``None`` ("from the data") becomes the checkpoint's."""
    if config is None:
        try:
            return config_from_dict(stored, source=None)
        except InputError as e:
            raise InputError(f"stored config is invalid: {e}", path) from e
    stored_model = stored.get("model") or {}
    stored_name, stored_classes = stored_model.get("name"), stored_model.get("num_classes")
    if config.model.num_classes is None:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, num_classes=stored_classes))
    if config.model.name != stored_name:
        raise InputError(f"checkpoint is a '{stored_name}' model but config model.name is '{config.model.name}'", path)
    if config.model.num_classes != stored_classes:
        raise InputError(
            f"checkpoint has {stored_classes} classes but config model.num_classes is {config.model.num_classes}", path)
    return config


def _plain_checkpoint(obj: Any, config: Config | None, categories: list[dict] | None,
                      path: str) -> tuple[Config, list[dict], Mapping]:
    """``(config, categories, state_dict)`` of a plain torchvision state dict: ``config`` is
    required; without ``model.num_classes`` it is the categories' count plus background."""
    if config is None:
        raise InputError(
            "this is a plain state dict without det_al config: pass a config (--config) naming "
            "the model and num_classes",
            path,
        )
    if config.model.num_classes is None:
        if not categories:
            raise InputError(
                "this is a plain state dict: set model.num_classes in the config (categories + background)", path
            )
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, num_classes=len(categories) + 1))
    state_dict = _plain_state_dict(obj, path)
    cats = [] if categories is None else _check_categories(
        categories, config.model.num_classes, path, "categories given for"
    )
    return config, cats, state_dict


__all__ = [
    "FORMAT",
    "category_id_to_label",
    "label_to_category_id",
    "load_checkpoint",
    "save_checkpoint",
]
