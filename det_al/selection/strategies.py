"""Batch selection strategies over a ranking.

Every strategy is a plain function with one signature::

    strategy(records, budget=None, budget_boxes=None, **context) -> list[dict]

``records`` are ranking records (``ranking.jsonl``: ``image_id``, ``informativeness``, the
components ``class``, ``box``, ``mask``, ``presence``, optionally ``novelty``, and
``n_objects``). The result is the chosen records, in the order they were picked; the input is
never modified. A strategy ignores the context keys it does not use, so a caller can pass the
same context to all of them:

- ``key``: the record field to rank by (default ``"informativeness"``; any single component
  such as ``"class"``, ``"box"``, ``"mask"``, ``"presence"`` or ``"novelty"`` works);
- ``seed``: the seed of :func:`random`;
- ``embeddings`` (array ``[M, D]``) and ``embedding_ids`` (``M`` image ids in row order; when
  omitted the rows follow ``records``), ``labelled_embeddings`` (``[L, D]``): for :func:`diverse`;
- ``image_classes``: image id -> predicted category ids, one per predicted object
  (:func:`classes_from_annotations` builds it from ``pseudo_labels.json``): for
  :func:`class_balanced`;
- ``pre_factor``: how many candidates per budget slot :func:`diverse` considers (default 3);
- ``fusion_weights`` (field -> weight, default ``{"informativeness": 1, "novelty": 1}``) and
  ``fusion_k`` (default 60): the reciprocal-rank fusion of :func:`fused`, also used wherever
  ``key`` is ``"fused"`` (``diverse:fused`` pre-filters by it).

**Budgets.** ``budget`` caps the number of images, ``budget_boxes`` the number of predicted
boxes (the sum of ``n_objects`` of the chosen images): annotation cost grows with the objects
to draw. At least one must be given; with both, both hold. For the box budget an image costs
``max(n_objects, 1)`` boxes: an image with nothing predicted still has to be looked at, and
empty images would otherwise be free. Budgets are filled greedily in priority order: an image
that does not fit in what is left is passed over and the next one is tried.

The registry is :data:`STRATEGIES`; :func:`get_strategy` looks a name up (``"top:class"``
means :func:`top` ranked by the ``class`` component).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from det_al.errors import InputError
from det_al.selection.embeddings import record_embeddings, unit_rows
from det_al.selection.typicality import switch_strategy, typicality_strategy

logger = logging.getLogger(__name__)

Strategy = Callable[..., list[dict]]


# --------------------------------------------------------------------------- budgets


def box_cost(record: Mapping[str, Any], min_cost: int = 1) -> int:
    """Annotation cost of one image in boxes: its predicted objects, at least ``min_cost``."""
    return max(int(record.get("n_objects", 0) or 0), min_cost)


def check_budget(budget: int | None, budget_boxes: int | None) -> None:
    """Raise :class:`InputError` unless at least one budget is given and both are >= 1."""
    if budget is None and budget_boxes is None:
        raise InputError("give a budget in images (--budget) or in boxes (--budget-boxes)")
    for name, value in (("budget", budget), ("budget_boxes", budget_boxes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{name} must be a positive integer, got {value!r}")


class _Budget:
    """What is left of an image budget and a box budget while a batch is filled."""

    def __init__(self, budget: int | None, budget_boxes: int | None):
        check_budget(budget, budget_boxes)
        self.images = math.inf if budget is None else budget
        self.boxes = math.inf if budget_boxes is None else budget_boxes

    def fits(self, record: Mapping[str, Any]) -> bool:
        return self.images >= 1 and box_cost(record) <= self.boxes

    def take(self, record: Mapping[str, Any]) -> None:
        self.images -= 1
        self.boxes -= box_cost(record)

    def spent(self) -> bool:
        return self.images < 1 or self.boxes < 1


def fill(records: Sequence[dict], order: Iterable[int], budget: int | None, budget_boxes: int | None) -> list[dict]:
    """Take ``records[i]`` for ``i`` in ``order`` while the budgets allow, skipping misfits."""
    left = _Budget(budget, budget_boxes)
    chosen = []
    for i in order:
        if left.spent():
            break
        if left.fits(records[i]):
            left.take(records[i])
            chosen.append(records[i])
    return chosen


NOT_RANKABLE = ("image_id", "rank", "empty", "certain")


def rankable_fields(record: Mapping[str, Any]) -> list[str]:
    """The numeric fields of a ranking record that ``top:<field>`` can rank by, sorted."""
    return sorted(k for k, v in record.items()
                  if k not in NOT_RANKABLE and isinstance(v, (int, float)) and not isinstance(v, bool))


DEFAULT_FUSION = {"informativeness": 1.0, "novelty": 1.0}


def fusion_scores(records: Sequence[dict], weights: Mapping[str, float] | None = None, k: float = 60.0) -> list[float]:
    """Weighted reciprocal-rank fusion: ``sum_f w_f / (k + rank_f(i))`` per record.

    ``rank_f`` is the 1-based rank by field ``f``, highest first, ties in ranking order. A
    field's weight scales its vote; no field gates another (an image last by one field still
    gets that field's smallest vote). Raises :class:`InputError` when a field is missing
    (``novelty`` needs ``det-al score --labelled``).

    >>> r = [{"image_id": 1, "a": 0.9, "b": 0.1}, {"image_id": 2, "a": 0.5, "b": 0.8}]
    >>> [round(v, 6) for v in fusion_scores(r, {"a": 1.0, "b": 2.0}, k=1)]
    [1.166667, 1.333333]
    """
    weights = dict(DEFAULT_FUSION if weights is None else weights)
    if k < 0:
        raise InputError(f"the fusion constant k must be >= 0, got {k}")
    if not weights or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in weights.values()):
        raise InputError(f"fusion weights must be non-negative numbers, got {weights}")
    scores = [0.0] * len(records)
    if not records:
        return scores
    for field, weight in weights.items():
        if field not in records[0]:
            hint = " (score the pool with det-al score --labelled TRAIN.json)" if field == "novelty" else ""
            raise InputError(f"the fused strategy needs '{field}' in every ranking record{hint}")
        for rank, i in enumerate(_priority(records, field), start=1):
            scores[i] += float(weight) / (k + rank)
    return scores


def _priority(records: Sequence[dict], key: str, fusion_weights: Mapping[str, float] | None = None,
              fusion_k: float = 60.0) -> list[int]:
    """Indices of ``records`` by ``key``, highest first; ties keep the ranking order.

    ``key == "fused"`` orders by :func:`fusion_scores`."""
    if key == "fused":
        fused = fusion_scores(records, fusion_weights, fusion_k)
        return sorted(range(len(records)), key=lambda i: -fused[i])
    if records and key not in rankable_fields(records[0]):
        raise InputError(f"cannot rank by '{key}': not a numeric field of the ranking records "
                         f"(valid: {', '.join(rankable_fields(records[0]))})")
    values = [float(r.get(key, 0.0) or 0.0) for r in records]
    return sorted(range(len(records)), key=lambda i: -values[i])


# --------------------------------------------------------------------------- strategies


def random(
    records: Sequence[dict],
    budget: int | None = None,
    budget_boxes: int | None = None,
    *,
    seed: int = 0,
    **_: Any,
) -> list[dict]:
    """A uniformly random batch: a seeded permutation of the pool filled up to the budget."""
    order = np.random.default_rng(seed).permutation(len(records)).tolist()
    return fill(records, order, budget, budget_boxes)


def top(
    records: Sequence[dict],
    budget: int | None = None,
    budget_boxes: int | None = None,
    *,
    key: str = "informativeness",
    fusion_weights: Mapping[str, float] | None = None,
    fusion_k: float = 60.0,
    **_: Any,
) -> list[dict]:
    """The highest-``key`` images (informativeness, or one component such as ``"box"``)."""
    return fill(records, _priority(records, key, fusion_weights, fusion_k), budget, budget_boxes)


def fused(
    records: Sequence[dict],
    budget: int | None = None,
    budget_boxes: int | None = None,
    *,
    fusion_weights: Mapping[str, float] | None = None,
    fusion_k: float = 60.0,
    **_: Any,
) -> list[dict]:
    """The images first by weighted reciprocal-rank fusion of informativeness and novelty
    (:func:`fusion_scores`; the fields and weights are ``fusion_weights``)."""
    return fill(records, _priority(records, "fused", fusion_weights, fusion_k), budget, budget_boxes)


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
    order = _priority(records, key, fusion_weights, fusion_k)
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
    left = _Budget(budget, budget_boxes)
    picks = k_center_greedy(
        points,
        centers,
        fits=lambda j: left.fits(records[candidates[j]]),
        take=lambda j: left.take(records[candidates[j]]),
    )
    return [records[candidates[j]] for j in picks]


def classes_from_annotations(annotations: Iterable[Mapping[str, Any]]) -> dict[int, list[int]]:
    """image id -> predicted category ids (one per annotation) from pseudo-label annotations."""
    out: dict[int, list[int]] = {}
    for a in annotations:
        out.setdefault(int(a["image_id"]), []).append(int(a["category_id"]))
    return out


def class_quotas(frequency: Mapping[int, int], total: int) -> dict[int, int]:
    """Split ``total`` over classes in proportion to ``1 / frequency`` (largest remainders).

    >>> class_quotas({1: 8, 2: 2}, 4)
    {1: 1, 2: 3}
    """
    classes = sorted(c for c, f in frequency.items() if f > 0)
    if not classes or total <= 0:
        return {c: 0 for c in classes}
    weights = np.array([1.0 / frequency[c] for c in classes])
    exact = total * weights / weights.sum()
    quota = np.floor(exact).astype(int)
    remainder = exact - quota
    for j in np.argsort(-remainder, kind="stable")[: total - int(quota.sum())]:
        quota[j] += 1
    return {c: int(q) for c, q in zip(classes, quota)}


def balance_labelled(
    records: Sequence[dict],
    order: Sequence[int],
    image_classes: Mapping[int, Sequence[int]],
    labelled_classes: Mapping[int, int],
    budget: int | None,
    budget_boxes: int | None,
) -> list[dict]:
    """The rarest labelled class first: each pick goes to the class with the fewest objects in the
    labelled set and the batch so far, among the classes some unpicked image is predicted to hold
    (ties: the class predicted in fewer pool images, then the lower id), and takes the first such
    image in ``order`` (the strategy's priority); the image's predicted objects then count for
    their classes. When no predicted class is left, the rest fills by ``order``.

    >>> recs = [{"image_id": i} for i in (1, 2, 3)]
    >>> [r["image_id"] for r in balance_labelled(recs, [0, 1, 2], {1: [5], 2: [5, 5], 3: [7]}, {5: 1, 7: 2}, 2, None)]
    [1, 3]
    """
    counts = {int(c): int(n) for c, n in labelled_classes.items()}
    classes = [sorted(set(int(c) for c in image_classes.get(int(r["image_id"]), ()))) for r in records]
    frequency: dict[int, int] = {}
    for present in classes:
        for c in present:
            frequency[c] = frequency.get(c, 0) + 1
    left = _Budget(budget, budget_boxes)
    chosen: list[int] = []
    open_ = [i for i in order]
    while not left.spent():
        fits = [i for i in open_ if left.fits(records[i])]
        wanted = {c for i in fits for c in classes[i]}
        if not wanted:
            break
        c = min(wanted, key=lambda c: (counts.get(c, 0), frequency[c], c))
        i = next(i for i in fits if c in classes[i])
        chosen.append(i)
        open_.remove(i)
        left.take(records[i])
        for label in image_classes.get(int(records[i]["image_id"]), ()):
            counts[int(label)] = counts.get(int(label), 0) + 1
    for i in open_:  # images without a prediction (or classes no longer wanted), by priority
        if left.spent():
            break
        if left.fits(records[i]):
            chosen.append(i)
            left.take(records[i])
    return [records[i] for i in chosen]


def class_balanced(
    records: Sequence[dict],
    budget: int | None = None,
    budget_boxes: int | None = None,
    *,
    image_classes: Mapping[int, Sequence[int]] | None = None,
    labelled_classes: Mapping[int, int] | None = None,
    key: str = "informativeness",
    fusion_weights: Mapping[str, float] | None = None,
    fusion_k: float = 60.0,
    **_: Any,
) -> list[dict]:
    """Batches that even out the classes: with ``labelled_classes`` (category id -> objects in
    the labelled set), the rarest labelled class first (:func:`balance_labelled`); without,
    quotas that favour rare predicted classes.

    The predicted frequency ``f_c`` of a class is the number of pool images predicted to
    contain it. Each image belongs to its rarest predicted class. The budget (images, or boxes
    for a box budget) is split over classes in proportion to ``1 / f_c``
    (:func:`class_quotas`); each class takes its most informative images up to its quota;
    whatever quotas leave unused (a class with too few images) and images with no prediction
    are then filled by informativeness.
    """
    check_budget(budget, budget_boxes)
    if image_classes is None:
        raise InputError("the class-balanced strategy needs the predicted classes of each image (pseudo_labels.json)")
    order = _priority(records, key, fusion_weights, fusion_k)
    if labelled_classes is not None:
        return balance_labelled(records, order, image_classes, labelled_classes, budget, budget_boxes)
    frequency: dict[int, int] = {}
    for r in records:
        for c in set(image_classes.get(int(r["image_id"]), ())):
            frequency[c] = frequency.get(c, 0) + 1
    group = {}
    for i, r in enumerate(records):
        present = set(image_classes.get(int(r["image_id"]), ()))
        group[i] = min(present, key=lambda c: (frequency[c], c)) if present else None
    by_images = budget_boxes is None
    total = budget if by_images else budget_boxes
    quotas = class_quotas(frequency, int(total))
    left = _Budget(budget, budget_boxes)
    chosen: set[int] = set()
    for c, quota in quotas.items():
        used = 0
        for i in order:
            cost = 1 if by_images else box_cost(records[i])
            if group[i] != c or i in chosen or used + cost > quota or not left.fits(records[i]):
                continue
            chosen.add(i)
            left.take(records[i])
            used += cost
    for i in order:  # leftovers by informativeness
        if left.spent():
            break
        if i not in chosen and left.fits(records[i]):
            chosen.add(i)
            left.take(records[i])
    return [records[i] for i in order if i in chosen]


STRATEGIES: dict[str, Strategy] = {
    "random": random,
    "top": top,
    "diverse": diverse,
    "class-balanced": class_balanced,
    "fused": fused,
    "typical": typicality_strategy,
    "switch": functools.partial(switch_strategy, then=top),  # typical, then top by its key
}


def default_strategy(records: Sequence[Mapping[str, Any]], labelled_classes: Mapping[int, int] | None = None) -> str:
    """The strategy used when none is named:

    - ``class-balanced:fused`` when every record has a ``novelty`` and the labelled set's
      objects per class are known (the pool was scored with ``--labelled TRAIN.json``): the
      rarest labelled class first, each class's images by informativeness and novelty;
    - ``fused`` (informativeness and novelty, by rank) with novelty alone (the labelled set
      given as embeddings);
    - ``top`` otherwise.

    In ``benchmarks/bench_warm_start.py`` (real handwriting, 150 labelled images + 5 rounds of
    50, seeds not used to design it) ``class-balanced:fused`` was the one strategy above random
    on both seed sets' paired AULC and above ``fused``; ``fused`` found the model's errors better
    than the informativeness alone in ``benchmarks/bench_error_capture.py``
    (docs/loop_and_benchmarks.md).

    >>> default_strategy([{"informativeness": 0.3, "novelty": 0.5}], {1: 4})
    'class-balanced:fused'
    >>> default_strategy([{"informativeness": 0.3, "novelty": 0.5}]), default_strategy([{"informativeness": 0.3}], {1: 4})
    ('fused', 'top')
    """
    if not records or not all(r.get("novelty") is not None for r in records):
        return "top"
    return "fused" if labelled_classes is None else "class-balanced:fused"


def get_strategy(name_or_callable: str | Strategy) -> Strategy:
    """A strategy by name (``"diverse"``, or ``"top:class"`` to rank by one field, ``"diverse:fused"``
    to pre-filter by :func:`fusion_scores`); a callable passes through."""
    if callable(name_or_callable):
        return name_or_callable
    name, _, key = str(name_or_callable).partition(":")
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy '{name_or_callable}' (valid: {', '.join(STRATEGIES)}; NAME:KEY ranks by KEY)")
    fn = STRATEGIES[name]
    return functools.partial(fn, key=key) if key else fn


def run_strategy(
    strategy: str | Strategy,
    records: Sequence[dict],
    budget: int | None = None,
    budget_boxes: int | None = None,
    **context: Any,
) -> list[dict]:
    """Run a strategy (name or callable) on ``records`` with the shared ``context``."""
    check_budget(budget, budget_boxes)
    chosen = get_strategy(strategy)(records, budget, budget_boxes, **context)
    logger.debug("%s chose %d of %d images", strategy, len(chosen), len(records))
    return chosen
