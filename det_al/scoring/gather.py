"""The detections of each matched object in each pass, gathered into tensors with the pass axis last.

:func:`gather` turns the anchor, the T stochastic passes and their matched
:class:`~det_al.scoring.matching.Objects` into ``found [K, T]``, ``scores [K, T]``, ``labels [K, T]``,
``boxes [K, T, 4]`` and ``probs [K, T, C]`` (:class:`Gathered`); a pass that missed an object gives
:func:`~det_al.inference.detections.background_probs`, score 0, label 0 and a zero box.
:func:`found_probs` gives the probabilities of the found pairs only. The components of
:mod:`det_al.scoring.uncertainty` read these.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from det_al.inference.detections import Detections, background_probs
from det_al.scoring.matching import Objects


@dataclass
class Gathered:
    """The detections of each object in each pass.

    Attributes:
        found: ``[K, T]`` bool, pass ``t`` found object ``k``.
        scores: ``[K, T]`` float, confidence (0 for a miss).
        labels: ``[K, T]`` int64, label (0 for a miss).
        boxes: ``[K, T, 4]`` float xyxy (0 for a miss).
        probs: ``[K, T, C]`` float, class probabilities (``background_probs`` for a miss);
            ``None`` when not gathered (see :func:`gather`).
    """

    found: Tensor
    scores: Tensor
    labels: Tensor
    boxes: Tensor
    probs: Tensor | None


def check_passes(anchor: Detections, passes: list[Detections], objects: Objects) -> None:
    """The objects were matched over these passes, and every pass has the anchor's classes."""
    if objects.num_passes != len(passes):
        raise ValueError(f"objects have {objects.num_passes} passes, got {len(passes)} passes")
    for t, p in enumerate(passes):
        if p.num_classes != anchor.num_classes or p.prob_kind != anchor.prob_kind:
            raise ValueError(
                f"pass {t} has {p.num_classes} {p.prob_kind} probabilities, the anchor "
                f"{anchor.num_classes} {anchor.prob_kind}"
            )


def flat_index(passes: list[Detections], objects: Objects) -> Tensor:
    """``[K, T]`` index into the passes' detections concatenated; a miss points one past the end
    (where :func:`take` puts the miss row)."""
    sizes = torch.tensor([len(p) for p in passes], dtype=torch.int64)
    offsets = torch.cumsum(sizes, 0) - sizes
    miss = int(sizes.sum())
    return torch.where(objects.found, objects.index + offsets, torch.full_like(objects.index, miss))


def take(passes: list[Detections], field: str, flat: Tensor, miss_row: Tensor) -> Tensor:
    """``field`` of the passes' detections at ``flat`` (:func:`flat_index`), ``miss_row`` for a miss."""
    parts = [getattr(p, field).cpu() for p in passes]
    parts.append(miss_row[None].to(parts[0].dtype if parts else miss_row.dtype))
    return torch.cat(parts)[flat]


def gather(anchor: Detections, passes: list[Detections], objects: Objects, probs: bool = True) -> Gathered:
    """Gather per-object, per-pass tensors (see :class:`Gathered`, on the CPU), pass axis last.

    ``probs=False`` skips the ``[K, T, C]`` probabilities, mostly copies of the miss vector when
    the passes disagree: :func:`~det_al.scoring.uncertainty.score_objects` reads the found ones
    with :func:`found_probs`.
    """
    check_passes(anchor, passes, objects)
    k, t = objects.index.shape
    c = anchor.num_classes
    flat = flat_index(passes, objects)
    return Gathered(
        found=objects.found,
        scores=take(passes, "scores", flat, torch.zeros(())).float().reshape(k, t),
        labels=take(passes, "labels", flat, torch.zeros((), dtype=torch.int64)).reshape(k, t),
        boxes=take(passes, "boxes", flat, torch.zeros(4)).float().reshape(k, t, 4),
        probs=(
            take(passes, "probs", flat, background_probs(c, anchor.prob_kind)).float().reshape(k, t, c)
            if probs else None
        ),
    )


def found_probs(passes: list[Detections], objects: Objects) -> tuple[Tensor, Tensor]:
    """The class probabilities of the found (object, pass) pairs, on the CPU.

    Returns:
        ``(probs, object_index)``: ``[F, C]`` float, one row per ``True`` of ``objects.found``
        in row-major order, and ``[F]`` int64, the object of each row.
    """
    object_index, _ = objects.found.nonzero(as_tuple=True)
    flat = flat_index(passes, objects)[objects.found]
    if not passes:
        return torch.zeros((0, 0)), object_index
    return torch.cat([p.probs.cpu() for p in passes])[flat].float(), object_index
