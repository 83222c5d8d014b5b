"""The ``class-balanced`` strategy: batches that even out the classes, by the model's predicted
classes: the rarest class of the labelled set first (:func:`balance_labelled`), or without the
labelled set's counts, quotas that favour classes rare in the pool's predictions."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from det_al.errors import InputError
from det_al.selection.budget import Budget, box_cost, check_budget
from det_al.selection.priority import priority_order


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
    left = Budget(budget, budget_boxes)
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
    order = priority_order(records, key, fusion_weights, fusion_k)
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
    left = Budget(budget, budget_boxes)
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
