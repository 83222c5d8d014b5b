"""The ``diverse`` strategy: uncertainty first, then spread by greedy k-center over embeddings."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch

from det_al.errors import InputError
from det_al.selection.budget import Budget, box_cost, check_budget
from det_al.selection.embeddings import record_embeddings, unit_rows
from det_al.selection.priority import priority_order


def k_center_greedy(
    candidates: torch.Tensor,
    centers: torch.Tensor | None,
    n: int | None = None,
    fits: Callable[[int], bool] | None = None,
    take: Callable[[int], None] | None = None,
) -> list[int]:
    """Greedy k-center (core-set) picks among ``candidates``.

    Args:
        candidates: ``[N, D]`` points; ties and the first pick (when there are no centers) go
            to the lowest index, so order candidates by priority.
        centers: ``[M, D]`` points already covered (the labelled set), or None / empty.
        n: how many to pick at most (default: all).
        fits / take: optional budget hooks; a candidate for which ``fits(i)`` is false is never
            picked, and ``take(i)`` is called on each pick.

    Each pick is the candidate whose distance to its nearest center is largest; it then
    becomes a center. Returns the picked indices in pick order.
    """
    n_points = len(candidates)
    limit = n_points if n is None else min(n, n_points)
    if n_points == 0 or limit == 0:
        return []
    if centers is not None and len(centers):
        nearest = torch.cdist(candidates, centers).min(dim=1).values
    else:
        nearest = torch.full((n_points,), math.inf, dtype=candidates.dtype)
    available = torch.ones(n_points, dtype=torch.bool)
    picks: list[int] = []
    while len(picks) < limit:
        for i in torch.nonzero(available).flatten().tolist():
            if fits is not None and not fits(i):
                available[i] = False
        if not available.any():
            break
        score = torch.where(available, nearest, torch.tensor(-1.0, dtype=nearest.dtype))
        i = int(torch.argmax(score))  # first maximum: the highest-priority candidate on ties
        picks.append(i)
        available[i] = False
        if take is not None:
            take(i)
        nearest = torch.minimum(nearest, torch.cdist(candidates, candidates[i : i + 1]).flatten())
    return picks


def diverse(
    records: Sequence[dict],
    budget: int | None = None,
    budget_boxes: int | None = None,
    *,
    embeddings: Any = None,
    embedding_ids: Sequence[int] | None = None,
    labelled_embeddings: Any = None,
    pre_factor: float = 3.0,
    key: str = "informativeness",
    fusion_weights: Mapping[str, float] | None = None,
    fusion_k: float = 60.0,
    **_: Any,
) -> list[dict]:
    """Uncertainty first, then spread: k-center greedy over the most informative images.

    The candidates are the top ``pre_factor * budget`` images by ``key`` (for a box budget:
    the top images whose predicted boxes add up to ``pre_factor * budget_boxes``). Among them,
    k-center greedy picks the image farthest from everything already covered (the labelled
    set's embeddings when given, and the images picked so far), so a batch is not a set of
    near-duplicates. Distances are Euclidean between L2-normalised embeddings (a monotone
    function of the cosine distance: ``|a - b|^2 = 2 - 2 cos(a, b)``). Without labelled
    embeddings the first pick is the most informative candidate.
    """
    check_budget(budget, budget_boxes)
    if embeddings is None:
        raise InputError("the diverse strategy needs per-image embeddings (embeddings.npy from det-al score)")
    if pre_factor < 1:
        raise InputError(f"pre_factor must be >= 1, got {pre_factor}")
    if not records:
        return []
    order = priority_order(records, key, fusion_weights, fusion_k)
    n_images = len(order) if budget is None else math.ceil(pre_factor * budget)
    n_boxes = math.inf if budget_boxes is None else pre_factor * budget_boxes
    candidates: list[int] = []
    boxes = 0
    for i in order:
        if len(candidates) >= n_images or boxes + box_cost(records[i]) > n_boxes:
            break
        candidates.append(i)
        boxes += box_cost(records[i])
    if not candidates:  # the single most informative image exceeds pre_factor * budget_boxes
        candidates = order
    points = unit_rows(record_embeddings([records[i] for i in candidates], embeddings, embedding_ids))
    centers = None
    if labelled_embeddings is not None and len(labelled_embeddings):
        centers = unit_rows(labelled_embeddings)
        if centers.ndim != 2 or centers.shape[1] != points.shape[1]:
            raise InputError(
                f"labelled embeddings of shape {tuple(centers.shape)} do not match pool embeddings of dimension {points.shape[1]}"
            )
    left = Budget(budget, budget_boxes)
    picks = k_center_greedy(
        points,
        centers,
        fits=lambda j: left.fits(records[candidates[j]]),
        take=lambda j: left.take(records[candidates[j]]),
    )
    return [records[candidates[j]] for j in picks]
