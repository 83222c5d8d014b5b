"""Novelty: how far an image's embedding is from everything already labelled.

Uncertainty alone cannot tell an unseen pattern from a shifted known one: a drifted image the
model is confidently wrong about can score low. Novelty is written beside it.

**Rule.** Distances are cosine distances between embeddings, ``1 - cos(a, b)`` (in [0, 2]; the
same as on L2-normalised embeddings). For a pool image ``p`` and labelled images ``l_j``::

    d(p)    = min_j (1 - cos(p, l_j))            distance to the nearest labelled image
    s       = median_i min_{j != i} (1 - cos(l_i, l_j))
                                                 the labelled set's own nearest-neighbour spacing
    novelty = d / (d + s)                        in [0, 1)

0 means "a duplicate of a labelled image"; 0.5 means "as far from the labelled set as a typical
labelled image is from its nearest labelled neighbour"; values towards 1 lie far outside it.
Dividing by the set's own spacing makes the value independent of how tightly a backbone packs
its features (a barely trained network can put every image within 1e-4 of every other in
cosine distance). With fewer than two labelled images, or a spacing of 0, ``s = 1`` (the
distance of orthogonal embeddings). With no labelled image, every novelty is 1. A zero
embedding has cosine 0 with everything (distance 1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from det_al.errors import InputError


def _as_matrix(x: Any, name: str) -> Tensor:
    t = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if t.ndim != 2:
        raise InputError(f"expected {name} of shape (N, D), got {tuple(t.shape)}")
    return t


def nearest_distance(pool_embeddings: Any, labelled_embeddings: Any, chunk: int = 4096) -> Tensor:
    """``Tensor[N]`` float64: cosine distance of each pool embedding ``[N, D]`` to its nearest
    labelled embedding ``[M, D]`` (``M >= 1``). ``chunk`` pool rows are compared at a time."""
    pool = nn.functional.normalize(_as_matrix(pool_embeddings, "pool embeddings"), dim=1)
    labelled = nn.functional.normalize(_as_matrix(labelled_embeddings, "labelled embeddings"), dim=1)
    if labelled.shape[1] != pool.shape[1]:
        raise InputError(
            f"labelled embeddings have dimension {labelled.shape[1]}, pool embeddings {pool.shape[1]}"
        )
    out = torch.empty(len(pool), dtype=torch.float64)
    for start in range(0, len(pool), chunk):
        cos = pool[start : start + chunk] @ labelled.T
        out[start : start + chunk] = 1.0 - cos.max(dim=1).values
    return out.clamp_(min=0.0)


def labelled_spacing(labelled_embeddings: Any) -> float:
    """Median over labelled images of the cosine distance to their nearest other labelled image
    (1.0 with fewer than two images or when that median is 0)."""
    labelled = _as_matrix(labelled_embeddings, "labelled embeddings")
    if len(labelled) < 2:
        return 1.0
    unit = nn.functional.normalize(labelled, dim=1)
    dist = (1.0 - unit @ unit.T).clamp_(min=0.0)
    dist.fill_diagonal_(math.inf)
    spacing = float(dist.min(dim=1).values.median())
    return spacing if spacing > 0 else 1.0


def novelty(pool_embeddings: Any, labelled_embeddings: Any, chunk: int = 4096, spacing: float | None = None) -> Tensor:
    """Novelty of each pool image: ``d / (d + s)`` (see the module docstring).

    Args:
        pool_embeddings: ``[N, D]`` one embedding per pool image.
        labelled_embeddings: ``[M, D]`` one embedding per labelled image (``M`` may be 0).
        chunk: pool rows compared at a time (bounds memory at ``chunk * M``).
        spacing: :func:`labelled_spacing` of ``labelled_embeddings`` when the caller has it.

    Returns:
        ``Tensor[N]`` float32 in [0, 1].
    """
    pool = _as_matrix(pool_embeddings, "pool embeddings")
    if labelled_embeddings is None or len(labelled_embeddings) == 0:
        return torch.ones(len(pool), dtype=torch.float32)
    d = nearest_distance(pool, labelled_embeddings, chunk)
    s = labelled_spacing(labelled_embeddings) if spacing is None else spacing
    return (d / (d + s)).float()
