"""The checks a scoring run makes once, at its entry, before the first image is read.

:func:`check_run` refuses a model det_al cannot score with, categories that do not fit it and a
pool that cannot give a useful run, each with an :class:`~det_al.errors.InputError` that says
why. :func:`det_al.score_images` and ``det-al score`` call it; what runs after it
(:mod:`det_al.run.score_lines`, :mod:`det_al.run.pool_run`) trusts its input.
"""

from __future__ import annotations

import os
from typing import Sequence

from torch import nn

from det_al.data.pool import PoolImages, as_pool_images, check_pool
from det_al.data.sources import resolve_categories
from det_al.errors import InputError
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
) -> list[dict]:
    """Every check of a scoring run, once; the run's categories.

    The model (:func:`check_model`); the categories: ``categories`` (dicts or names), else the
    pool's ``pool_categories``, else ``class_1`` ..., one per label of the model
    (:func:`det_al.data.sources.resolve_categories`, naming ``categories_source``); the pool
    (:func:`det_al.data.pool.check_pool`, naming ``pool_source``; ``image_root`` ``None``:
    images that are not files, only emptiness is checked).
    """
    check_model(model)
    resolved = resolve_categories(categories, model_num_classes(model), pool_categories, categories_source)
    check_pool(as_pool_images(images), image_root, allow_outside_root, pool_source)
    return resolved
