"""The order a strategy takes images in: by one ranking field, or by the weighted reciprocal-rank
fusion of several (:func:`fusion_scores`, ``key="fused"``)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from det_al.errors import InputError


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
        for rank, i in enumerate(priority_order(records, field), start=1):
            scores[i] += float(weight) / (k + rank)
    return scores


def priority_order(records: Sequence[dict], key: str, fusion_weights: Mapping[str, float] | None = None,
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
