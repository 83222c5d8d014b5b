"""The checks a scoring run makes once, at its entry, before the first image is read.

:func:`check_run` refuses a model det_al cannot score with, categories that do not fit it and a
pool that cannot give a useful run, each with an :class:`~det_al.errors.InputError` that says
why. :func:`det_al.score_images` and ``det-al score`` call it; what runs after it
(:mod:`det_al.run.score_lines`, :mod:`det_al.run.pool_run`) trusts its input.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from torch import nn

from det_al.config import PassesConfig
from det_al.data.images import check_image_root, outside_root, outside_root_error
from det_al.data.locate import check_images_found, probe_names
from det_al.data.pool import PoolImages, as_pool_images
from det_al.data.sources import resolve_categories
from det_al.errors import InputError
from det_al.inference.dropout import check_sites
from det_al.inference.tta import parse_views
from det_al.models.build import model_family, model_num_classes


def check_model(model: nn.Module) -> None:
    """Refuse, before any image is read, a model that det_al cannot score with: not a
    torchvision detector of a supported class, or in train mode (it would return losses, and
    BatchNorm statistics would move)."""
    try:
        model_family(model)
    except ValueError as e:
        raise InputError(f"cannot score with this model: {e}") from None
    if model.training:
        raise InputError(
            "cannot score with a model in train mode: call model.eval() first "
            "(det_al.models.checkpoint.load_checkpoint returns it in eval mode)"
        )


_DOTDOT = re.compile(r"(?:^|/)\.\.(?:/|$)")  # a ".." path component


def check_pool(
    images: PoolImages, image_root: str | os.PathLike | None, allow_outside_root: bool = False,
    source: str | os.PathLike | None = None,
) -> None:
    """Refuse a pool that cannot give a useful run: no images, an image root that is not a
    folder, (unless ``allow_outside_root``) a ``file_name`` that escapes the image root, or a
    root that holds most of the pool's files nowhere (:func:`det_al.data.locate.check_images_found`).
    ``image_root=None``: the images do not come from files (only emptiness is checked)."""
    if not len(images):
        raise InputError("the pool has no images", source)
    if image_root is None:
        return
    root = Path(image_root)
    check_image_root(root)
    if not allow_outside_root:
        _check_names_inside(images, root, source)
    check_images_found(probe_names(len(images), images.file_name), root, source)


def _check_names_inside(images: PoolImages, root: Path, source: str | os.PathLike | None) -> None:
    for start, stop, names, offsets in images._name_chunks():
        # Only an absolute name or one with a ".." component can escape: find the candidates with
        # numpy and a scan of the chunk's bytes (0.2 s for a million plain names).
        starts = np.asarray(offsets[:-1], dtype=np.int64)
        first = np.frombuffer(names, dtype=np.uint8)[np.minimum(starts, max(len(names) - 1, 0))] if names else starts
        candidates = np.flatnonzero(first == ord("/"))
        if b".." in names:
            dots = [m.start() for m in re.finditer(rb"(?=\.\.)", names)]  # overlapping: "a." + "../x"
            candidates = np.union1d(candidates, np.searchsorted(starts, dots, side="right") - 1)
        for i in (start + candidates).tolist():
            name = images.file_name(i)
            if (name.startswith("/") or _DOTDOT.search(name)) and outside_root(name, root):
                raise outside_root_error(i, images.image_id(i), name, root, source)


def check_run(
    model: nn.Module,
    images: PoolImages | list[dict],
    image_root: str | os.PathLike | None,
    *,
    categories: Sequence[dict | str] | None = None,
    pool_categories: Sequence[dict] | None = None,
    allow_outside_root: bool = False,
    pool_source: str | os.PathLike | None = None,
    categories_source: str | os.PathLike | None = None,
    passes: PassesConfig | None = None,
) -> list[dict]:
    """Every check of a scoring run, once; the run's categories.

    The model (:func:`check_model`); the categories: ``categories`` (dicts or names), else the
    pool's ``pool_categories``, else ``class_1`` ..., one per label of the model
    (:func:`det_al.data.sources.resolve_categories`, naming ``categories_source``); the pool
    (:func:`check_pool`, naming ``pool_source``; ``image_root`` ``None``:
    images that are not files, only emptiness is checked); the ``passes`` options that depend on
    the model: its dropout sites (:func:`det_al.inference.dropout.check_sites`) and test-time views.
    """
    check_model(model)
    if passes is not None:
        check_sites(model, passes.sites)
        parse_views(passes.tta)  # a view name it does not know: an InputError naming it
    resolved = resolve_categories(categories, model_num_classes(model), pool_categories, categories_source)
    check_pool(as_pool_images(images), image_root, allow_outside_root, pool_source)
    return resolved
