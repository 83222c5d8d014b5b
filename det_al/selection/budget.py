"""Selection budgets: ``budget`` images and/or ``budget_boxes`` predicted boxes, filled greedily.

For the box budget an image costs ``max(n_objects, 1)`` boxes (:func:`box_cost`): an image with
nothing predicted still has to be looked at. :func:`fill` takes images in a priority order and
passes over one that does not fit in what is left.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

from det_al.errors import InputError


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


class Budget:
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
    left = Budget(budget, budget_boxes)
    chosen = []
    for i in order:
        if left.spent():
            break
        if left.fits(records[i]):
            left.take(records[i])
            chosen.append(records[i])
    return chosen
