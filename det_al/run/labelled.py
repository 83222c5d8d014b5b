"""The labelled set's embeddings, for novelty (:mod:`det_al.scoring.novelty`).

:func:`labelled_embeddings` turns what the user gives as the labelled set (a COCO file or dict
and its image root, or embeddings already computed) into ``[M, D]`` embeddings of the model
being scored; :func:`det_al.score_images` (``labelled=``), ``det-al score --labelled`` and the
loop get them here, and the assembler adds ``novelty`` to each ranking record
(:mod:`det_al.run.assemble`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from collections import Counter
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from det_al.data.coco import load_coco
from det_al.data.datasets import PoolDataset, pool_collate
from det_al.data.images import check_file_names, check_image_root
from det_al.errors import InputError
from det_al.inference.passes import compute_prefix, embeddings
from det_al.models.build import model_family

logger = logging.getLogger(__name__)


def labelled_embeddings(
    labelled: Any, model: nn.Module, image_root: str | os.PathLike | None = None, device: str = "cpu",
    allow_outside_root: bool = False,
) -> np.ndarray:
    """``[M, D]`` float32 embeddings of the labelled set ``labelled``: a COCO file (its images
    relative to ``image_root``, default the file's folder), a COCO dict (relative to
    ``image_root``, default the working directory; without images: ``[0, 0]``) or an
    ``[M, D]`` array given as is.

    Raises:
        InputError: a labelled file without images, or a labelled set none of whose images
            can be read.
    """
    if isinstance(labelled, (np.ndarray, torch.Tensor)):
        array = np.asarray(labelled, dtype=np.float32)
        if array.ndim != 2:
            raise InputError(f"labelled: expected embeddings of shape (M, D), got {tuple(array.shape)}")
        return array
    where = os.fspath(labelled) if isinstance(labelled, (str, os.PathLike)) else "labelled (COCO dict)"
    if isinstance(labelled, Mapping):
        if not labelled.get("images"):  # nothing labelled yet (a loop's round 0): every image is novel
            return np.zeros((0, 0), np.float32)
        coco, default_root = dict(labelled), Path(".")
    else:
        coco, default_root = load_coco(labelled), Path(labelled).parent
    if not coco.get("images"):
        raise InputError("the labelled set has no images", where)
    root = Path(image_root) if image_root is not None else default_root
    check_image_root(root)
    check_file_names(coco["images"], root, where, allow_outside_root)
    emb, ids = embed_images(model, coco, root, device=device)
    if not len(ids):
        raise InputError("none of the labelled set's images could be read (check its image root)", where)
    return emb


def labelled_classes(labelled: Any) -> dict[int, int] | None:
    """Category id -> objects of that class in the labelled set (crowd and ignore regions left
    out), for the ``class-balanced`` strategy: ``None`` when ``labelled`` is embeddings.

    >>> labelled_classes({"images": [], "annotations": [{"category_id": 2}, {"category_id": 2}, {"category_id": 1, "iscrowd": 1}]})
    {2: 2}
    """
    if isinstance(labelled, (np.ndarray, torch.Tensor)):
        return None
    coco = labelled if isinstance(labelled, Mapping) else load_coco(labelled)
    counts = Counter(int(a["category_id"]) for a in coco.get("annotations", ())
                     if not a.get("iscrowd") and not a.get("ignore"))
    return dict(sorted(counts.items()))


@torch.no_grad()
def embed_images(
    model: nn.Module,
    coco: dict,
    image_root: str | os.PathLike,
    device: str = "cpu",
    batch_size: int = 4,
) -> tuple[np.ndarray, list[int]]:
    """Backbone embeddings of the images of a COCO dict (e.g. the labelled set).

    The same embedding the scoring pass computes (:func:`det_al.inference.passes.embeddings`: the
    coarsest feature map averaged over the image), from one deterministic forward of the
    model's upstream part, without passes or post-processing. Returns ``([N, D] float32, image
    ids in row order)``; unreadable images are left out with a warning.
    """
    family = model_family(model)
    was_training = model.training
    model.eval()
    dataset = PoolDataset(coco, image_root)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=pool_collate)
    rows: list[np.ndarray] = []
    ids: list[int] = []
    try:
        for batch in loader:
            good = [item for item in batch if "error" not in item]
            for item in batch:
                if "error" in item:
                    logger.warning("no embedding for %s: %s", item["file_name"], item["error"])
            if not good:
                continue
            prefix = compute_prefix(model, [item["image"].to(device) for item in good], family)
            rows.extend(embeddings(prefix).float().cpu().numpy())
            ids.extend(int(item["image_id"]) for item in good)
    finally:
        model.train(was_training)
    emb = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)
    return emb, ids
