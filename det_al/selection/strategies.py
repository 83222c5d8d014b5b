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
  (:func:`classes_from_annotations` builds it from ``pseudo_labels.json``), and
  ``labelled_classes``: category id -> objects in the labelled set: for :func:`class_balanced`;
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
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from det_al.selection.budget import box_cost, check_budget, fill
from det_al.selection.class_balanced import balance_labelled, class_balanced, class_quotas, classes_from_annotations
from det_al.selection.diverse import diverse, k_center_greedy
from det_al.selection.priority import DEFAULT_FUSION, NOT_RANKABLE, fusion_scores, priority_order, rankable_fields
from det_al.selection.typicality import switch_strategy, typicality_strategy

logger = logging.getLogger(__name__)

Strategy = Callable[..., list[dict]]


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
    return fill(records, priority_order(records, key, fusion_weights, fusion_k), budget, budget_boxes)


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
    return fill(records, priority_order(records, "fused", fusion_weights, fusion_k), budget, budget_boxes)


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


#: The registry and what the strategies are built from (budgets, priorities, the strategies of
#: their own modules), importable from here.
__all__ = [
    "STRATEGIES", "Strategy", "default_strategy", "get_strategy", "run_strategy", "random", "top", "fused", "diverse",
    "class_balanced", "balance_labelled", "typicality_strategy", "switch_strategy", "box_cost", "check_budget", "fill",
    "classes_from_annotations", "class_quotas", "k_center_greedy", "DEFAULT_FUSION", "NOT_RANKABLE", "fusion_scores",
    "priority_order", "rankable_fields",
]
