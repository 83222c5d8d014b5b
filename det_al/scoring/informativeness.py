"""Per-image informativeness: reduce objects to one value per image, then rank the pool.

**Image values.** :func:`image_informativeness` keeps the objects whose ``expected_score`` (mean
confidence over all passes, a miss counting 0) is at least
``ScoringConfig.min_score`` and reduces (``reduction``: ``max``, ``mean``, ``sum`` or ``topk``,
the mean of the ``topk`` largest) their per-object ``uncertainty`` into the image's
``informativeness``, and each term the same way into ``class`` (the component
``ScoringConfig.class_term`` names), ``box`` (``box_disagreement``), ``mask``
(``mask_disagreement``; 0 for a model without masks) and ``presence``
(``presence_uncertainty``). Because every per-object term is normalised to [0, 1] (see
:mod:`det_al.scoring.uncertainty`), ``max``, ``mean`` and ``topk`` stay in [0, 1]; ``sum`` grows with
the number of objects (a crowded image counts more).

With ``ScoringConfig.objects: anchored`` (the default) only the objects of the deterministic
pass, the pseudo-labels an annotator will correct, count; detections that only stochastic
passes produce still form objects (their misses and boxes are in ``passes.jsonl``) but do not
score the image. Such detections are mostly alternative classes and duplicate boxes of objects
already found, and on a trained model they made well-seen images look uncertain: on the demo
pool the share of drifted images in the top quarter was 2/20 counting them, 16/20 without.
``objects: all`` counts them too.

**Images where nothing is detected** (no object left after the ``min_score`` filter) get
``empty: true``. A model that sees nothing cannot tell an empty scene from a blind spot: such
an image is not certain, yet nothing in it says it is informative either. Scoring it 0 would
bury every blind spot at the bottom of the ranking; scoring it 1 would flood the top with
empty scenes. :func:`det_al.run.assemble.rank_records` (and the assembler) therefore place empty images deliberately, by
``ScoringConfig.empty_policy``:

- ``"quantile"`` (default): the ``empty_value``-quantile (default 0.5: the median, linear
  interpolation) of the non-empty images' informativeness, so empty images sit in the middle
  of the ranking; 0.5 when no image in the pool has objects;
- ``"value"``: ``empty_value`` itself, for users who want them at a fixed place (1.0: first,
  0.0: last).

Empty images are never ``certain``; the other images are ``certain`` when their
informativeness is below ``ScoringConfig.certain_threshold``. Their component values stay 0
(there is nothing to measure). The pool is then sorted most informative first and ``rank`` is
set 1-based. Ties (empty images above all) are broken by the larger ``dense`` value (an empty
image whose candidates disagree more comes first, see :mod:`det_al.scoring.dense`), then by a hash of
``(passes.seed, image_id)``, not by the image id itself: ids often follow capture order, and a
tie-break by id would always send the same end of a camera's footage to the annotators
(:func:`ranking_key`). :func:`apply_empty_policy` is the one place that places empty images,
for the ranking the assembler makes, in memory and streamed (:mod:`det_al.run.assemble`).

**Image-level combination.** ``ScoringConfig.image_weights`` (empty: the informativeness
above; the default fuses ``presence``, ``least_confidence`` and ``rpn_gap`` by rank, the
combination that found the model's errors best in ``benchmarks/bench_error_capture.py``)
replaces the image's informativeness by a weighted mean of image fields
(:data:`IMAGE_COMPONENTS`): ``objects`` (the per-object reduction above), ``class``, ``box``,
``mask``, ``presence``, ``dense``, ``miss``, ``rpn_gap`` (0 without an RPN),
``least_confidence``, ``max_entropy``; ``sum_c w_c x_c / sum_c w_c``, all in [0, 1]. Then an
image is ``empty`` only when it has neither an object nor a pre-threshold candidate (the
empty-image policy applies only there): an image whose model detects nothing still has its
dense values, so a blind spot no longer gets the pool's median. :func:`combine_image` computes
it; ``ranking.jsonl`` then also carries ``objects``. With ``ScoringConfig.image_combination:
rank`` the fields are fused by rank over the pool instead of by value (:func:`fuse_ranks`:
``sum_c w_c (k + 1) / (k + rank_c) / sum_c w_c``, ``k = ScoringConfig.rank_k``), so fields of any
scale mix and 1 means "first by every field".
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from det_al.config import ScoringConfig
from det_al.scoring.uncertainty import object_terms

REDUCTIONS = ("max", "mean", "sum", "topk")
COMPONENTS = ("class", "box", "mask", "presence")
IMAGE_COMPONENTS = ("objects", "class", "box", "mask", "presence", "dense", "miss", "rpn_gap",
                    "least_confidence", "max_entropy")


def reduce_objects(values: Tensor, how: str = "max", k: int = 3) -> float:
    """Reduce per-object values ``[K]`` to one number: ``max``, ``mean``, ``sum`` or ``topk``.

    ``topk`` is the mean of the ``k`` largest values (of all of them when there are fewer).
    No object gives 0.0 (the empty-image policy is applied when the pool is assembled).

    >>> v = torch.tensor([0.2, 0.8, 0.5])
    >>> [round(reduce_objects(v, how, k=2), 4) for how in REDUCTIONS]
    [0.8, 0.5, 1.5, 0.65]
    """
    if how not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {how!r}")
    if values.ndim != 1:
        raise ValueError(f"expected values of shape (K,), got {tuple(values.shape)}")
    if values.numel() == 0:
        return 0.0
    values = values.double()
    if how == "max":
        return float(values.max())
    if how == "mean":
        return float(values.mean())
    if how == "sum":
        return float(values.sum())
    if k < 1:
        raise ValueError(f"topk needs k >= 1, got {k}")
    return float(values.topk(min(k, values.numel())).values.mean())


def image_informativeness(
    object_values: dict[str, Tensor], scoring: ScoringConfig, has_masks: bool = False
) -> dict[str, Any]:
    """One image's informativeness from its per-object values (:func:`det_al.scoring.uncertainty.score_objects`).

    Returns:
        ``{"informativeness", "class", "box", "mask", "presence"}`` floats, ``"n_objects"``
        (objects with ``score >= min_score``) and ``"empty"`` (no such object; its
        informativeness is 0.0 until the assembler applies the empty policy).
    """
    keep = object_values.get("expected_score", object_values["score"]) >= scoring.min_score
    if scoring.objects == "anchored" and "anchored" in object_values:
        keep = keep & object_values["anchored"]
    terms = object_terms(object_values, scoring, has_masks)

    def reduce(values: Tensor) -> float:
        return reduce_objects(values[keep], scoring.reduction, scoring.topk)

    result: dict[str, Any] = {"informativeness": reduce(object_values["uncertainty"])}
    for name in COMPONENTS:
        result[name] = reduce(terms[name]) if name in terms else 0.0
    n = int(keep.sum())
    result["n_objects"] = n
    result["empty"] = n == 0
    return result


def combine_image(values: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """``sum_c w_c x_c / sum_c w_c`` over the named image fields (a missing field counts 0).

    >>> combine_image({"objects": 0.2, "dense": 0.8}, {"objects": 1.0, "dense": 3.0})
    0.65
    """
    total = sum(float(w) for w in weights.values())
    if total <= 0:
        return 0.0
    return round(sum(float(w) * float(values.get(name, 0.0)) for name, w in weights.items()) / total, 12)


#: Values of each field a rank reference keeps (quantiles of a larger pool): ranks against it are
#: exact for pools up to this size, and within 1/2,000 of the pool's size beyond.
REFERENCE_SIZE = 2_000


def rank_reference(columns: Mapping[str, Any], max_values: int = REFERENCE_SIZE) -> dict:
    """What :func:`fuse_ranks` needs to rank images of another call as if they were in this pool:
    ``{"n": N, "fields": {name: values sorted highest first}}``, each field kept whole up to
    ``max_values`` values, else as that many evenly spaced quantiles (plain lists: JSON-ready).

    >>> rank_reference({"a": [0.2, 0.9, 0.5]})
    {'n': 3, 'fields': {'a': [0.9, 0.5, 0.2]}}
    """
    fields, n = {}, 0
    for name, values in columns.items():
        x = np.sort(np.asarray(values, dtype=np.float64))[::-1]
        n = max(n, len(x))
        if len(x) > max_values:
            x = np.quantile(x, np.linspace(1.0, 0.0, max_values), method="inverted_cdf")
        fields[name] = [float(v) for v in x]
    return {"n": n, "fields": fields}


def _ranks(x: np.ndarray, reference: Mapping[str, Any] | None, name: str) -> np.ndarray:
    """``1 + #{values above x}``: in ``x`` itself, or in the reference pool (scaled to its size)."""
    if reference is None:
        return np.searchsorted(np.sort(-x), -x, side="left") + 1.0
    values = np.asarray(reference["fields"].get(name, ()), dtype=np.float64)
    if not len(values):
        return np.ones_like(x)
    above = np.searchsorted(np.sort(-values), -x, side="left")
    return 1.0 + above * (float(reference["n"]) / len(values))


def fuse_ranks(columns: Mapping[str, Any], weights: Mapping[str, float], k: float = 60.0,
               reference: Mapping[str, Any] | None = None) -> np.ndarray:
    """``[N]`` weighted reciprocal-rank fusion of image fields, scaled so that 1 is "first by all".

    ``rank_c(i) = 1 + #{j : x_c(j) > x_c(i)}`` (ties share the best rank, so the result does
    not depend on the order of the images); the value is
    ``sum_c w_c (k + 1) / (k + rank_c) / sum_c w_c``. A field missing from ``columns`` counts 0
    for every image.

    The ``j`` run over the images of ``columns``, so a value means something only inside one
    call (one image alone always scores 1). With a ``reference`` (:func:`rank_reference` of a
    scored pool), they run over that pool instead: ``rank_c(i)`` is the rank image ``i`` would
    have had in it, so images scored tomorrow, or one at a time by a server, get values
    comparable with the pool's own. A pool's reference to itself gives the plain ranks.

    >>> fuse_ranks({"a": [0.9, 0.1, 0.1], "b": [0.0, 0.5, 0.2]}, {"a": 1, "b": 1}, k=1).round(4).tolist()
    [0.75, 0.8333, 0.6667]
    >>> pool = rank_reference({"a": [0.9, 0.1, 0.1], "b": [0.0, 0.5, 0.2]})
    >>> fuse_ranks({"a": [0.1], "b": [0.5]}, {"a": 1, "b": 1}, k=1, reference=pool).round(4).tolist()
    [0.8333]
    """
    n = max((len(v) for v in columns.values()), default=0)
    total = sum(float(w) for w in weights.values())
    out = np.zeros(n, dtype=np.float64)
    if n == 0 or total <= 0:
        return out
    for name, weight in weights.items():
        x = np.asarray(columns.get(name, np.zeros(n)), dtype=np.float64)
        out += float(weight) * (k + 1.0) / (k + _ranks(x, reference, name))
    return np.round(out / total, 9)


def fused_informativeness(records: list[Mapping[str, Any]], scoring: ScoringConfig,
                          reference: Mapping[str, Any] | None = None) -> np.ndarray | None:
    """``[N]`` the rank-fused informativeness of ``records`` (``image_combination: rank``), else None;
    ranked against ``reference`` (:func:`rank_reference`) when given, else among themselves."""
    if scoring.image_combination != "rank" or not scoring.image_weights:
        return None
    columns = {name: [float(r.get(name, 0.0) or 0.0) for r in records] for name in scoring.image_weights}
    return fuse_ranks(columns, scoring.image_weights, scoring.rank_k, reference)


def empty_informativeness(values: list[float], scoring: ScoringConfig) -> float:
    """The informativeness given to empty images, from the non-empty images' ``values``.

    >>> empty_informativeness([0.1, 0.4, 0.3, 0.9], ScoringConfig())  # median of 4 values
    0.35
    >>> empty_informativeness([], ScoringConfig())
    0.5
    """
    if scoring.empty_policy == "value":
        return float(scoring.empty_value)
    if scoring.empty_policy != "quantile":
        raise ValueError(f"empty_policy must be quantile or value, got {scoring.empty_policy!r}")
    q = float(scoring.empty_value)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"empty_value must be a quantile in [0, 1] with empty_policy quantile, got {q}")
    if not values:
        return 0.5
    return round(float(np.quantile(np.asarray(values, dtype=np.float64), q)), 12)


def apply_empty_policy(record: dict[str, Any], fill: float, scoring: ScoringConfig) -> None:
    """Set ``informativeness`` (``fill`` for an empty image) and ``certain`` of one record, in place.

    ``certain`` compares a value of the image alone with ``certain_threshold``: its
    informativeness, or with ``image_combination: rank`` the weighted mean of the fused fields
    (:func:`combine_image`), since a rank-fused value depends on the pool's size (in a pool of a
    million every image but the first few would fall below any fixed threshold).
    """
    if record["empty"]:
        record["informativeness"] = fill
        record["certain"] = False
        return
    record["informativeness"] = float(record["informativeness"])
    value = record["informativeness"]
    if scoring.image_combination == "rank" and scoring.image_weights:
        value = combine_image(record, scoring.image_weights)
    record["certain"] = bool(value < scoring.certain_threshold)


def tie_break(seed: int, image_id: Any) -> int:
    """A seeded pseudo-random order of image ids, for ties (see the module docstring)."""
    digest = hashlib.blake2b(f"{seed}/{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def ranking_key(record: Mapping[str, Any], seed: int = 0) -> tuple:
    """The sort key of the ranking: informativeness, then ``dense``, both highest first, then
    :func:`tie_break`, then ``image_id``."""
    return (-float(record["informativeness"]), -float(record.get("dense", 0.0) or 0.0),
            tie_break(seed, record["image_id"]), str(record["image_id"]))
