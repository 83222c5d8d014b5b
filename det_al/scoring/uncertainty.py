"""Per-object uncertainty components, vectorised over objects, pass axis last.

Given the anchor (deterministic) detections, the T stochastic passes and the matched
:class:`~det_al.scoring.matching.Objects`, :func:`~det_al.scoring.gather.gather` builds
``found [K, T]``, ``scores [K, T]``, ``labels [K, T]``, ``boxes [K, T, 4]`` and ``probs [K, T, C]``;
a pass that missed an object contributes :func:`~det_al.inference.detections.background_probs`
(softmax: all mass on background; sigmoid: every class 0), score 0 and no box (:func:`score_objects` reads the class
probabilities of the found passes only and adds the misses in closed form, see
:func:`found_class_components`). :func:`score_objects` then computes, per object,
components in ``[0, 1]`` where 1 is maximal disagreement. ``p_t`` is the probability vector of
pass ``t``, means and variances over passes are population statistics over all T passes
(misses included) unless "over found passes" is said, ``H(p) = -sum_c p_c log p_c``,
``H_b(p) = -p log p - (1 - p) log(1 - p)``, ``0 log 0 = 0``:

- ``class_variance``: softmax: ``sum_c Var_t(p_c) / (1 - 1/C)`` (the largest ``sum_c Var`` a set
  of distributions can reach is ``1 - 1/C``); sigmoid: ``max_c Var_t(p_c) / 0.25`` (a value in
  [0, 1] has variance at most 1/4).
- ``entropy`` (predictive): softmax: ``H(mean_t p_t) / log C``; sigmoid:
  ``max_c H_b(mean_t p_tc) / log 2``.
- ``mutual_information`` (BALD): softmax: ``(H(mean_t p_t) - mean_t H(p_t)) / log C``; sigmoid:
  ``max_c (H_b(mean_t p_tc) - mean_t H_b(p_tc)) / log 2``. Tiny negative round-off is clamped to 0.
- ``box_disagreement``: over the passes that found the object, ``1 - mean_t IoU(b_t, mean box)``
  where the mean box is the coordinate mean of the found boxes; 0 when fewer than 2 passes
  found it.
- ``box_spread``: over found passes, the population std of ``x1`` and ``x2`` divided by the mean
  box's width and of ``y1`` and ``y2`` divided by its height; the mean of the four, clipped to
  [0, 1]; 0 when fewer than 2 passes found it.
- ``mask_disagreement`` (Mask R-CNN): masks thresholded at 0.5 (``p > 0.5``); the mean mask is
  ``(mean over found passes of the mask probabilities) > 0.5``;
  ``1 - mean_t IoU(M_t, mean mask)`` with ``pycocotools.mask`` (two empty masks have IoU 1); 0
  when fewer than 2 passes found the object or the model has no masks. Masks are compared
  inside the union of the object's found boxes, enlarged by a tenth on each side plus 2 pixels
  (see :func:`mask_disagreement`).
- ``presence``: ``q = found passes / T``; ``presence_uncertainty = 4 q (1 - q)`` (1 when half the
  passes see the object, 0 when all or none do).
- ``score``: the mean confidence over the found passes and the anchor's (when anchored).
- ``expected_score``: the same sum divided by all ``T`` passes plus the anchor (a miss counts
  as confidence 0): what the image-level ``min_score`` filter uses, so that detections which
  flicker into a few passes at low confidence do not count as objects.
- ``label``: the anchor's label, or for a not-anchored object the majority label of the found
  passes (ties: the smallest label). int64.
- ``uncertainty``: the weighted mean of the *terms* ``class`` (``class_variance``, ``entropy`` or
  ``mutual_information`` as ``ScoringConfig.class_term`` says), ``box`` (``box_disagreement``),
  ``mask`` (``mask_disagreement``, only when the model has masks) and ``presence``
  (``presence_uncertainty``), with ``ScoringConfig.weights`` (a missing weight is 0), divided by
  the sum of the weights that apply (0 when that sum is 0).

Normalisation: every component is scaled so that its largest possible value is 1, so the
class, box, mask and presence terms share the scale [0, 1] (0: all passes agree; 1: the most
disagreement the term can express) and the weights alone say how much each counts
(``box_spread`` is reported, not combined). With no stochastic pass (T = 0) every
disagreement component and the presence are 0.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from pycocotools import mask as mask_util
from torch import Tensor
from torchvision.ops import box_area

from det_al.config import ScoringConfig
from det_al.inference.detections import Detections, background_probs
from det_al.scoring.gather import flat_index, found_probs, gather, take
from det_al.scoring.matching import Objects

logger = logging.getLogger(__name__)

CLASS_TERMS = {
    "variance": "class_variance",
    "entropy": "entropy",
    "mutual_information": "mutual_information",
}
"""``ScoringConfig.class_term`` -> the component used as the ``class`` term."""

TERMS = ("class", "box", "mask", "presence")


def _entropy(p: Tensor) -> Tensor:
    """Shannon entropy over the last axis, ``0 log 0 = 0``."""
    return -torch.special.xlogy(p, p).sum(-1)


def _binary_entropy(p: Tensor) -> Tensor:
    """Elementwise binary entropy, ``0 log 0 = 0``."""
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


def class_components(probs: Tensor, prob_kind: str) -> dict[str, Tensor]:
    """``class_variance``, ``entropy`` and ``mutual_information`` of ``probs`` ``[K, T, C]``.

    Returns ``[K]`` tensors in [0, 1] (formulas in the module docstring).

    >>> p = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # two passes that disagree completely
    >>> {n: round(v.item(), 4) for n, v in class_components(p, "softmax").items()}
    {'class_variance': 1.0, 'entropy': 1.0, 'mutual_information': 1.0}
    """
    k, t, c = probs.shape
    object_index = torch.arange(k).repeat_interleave(t)
    return found_class_components(probs.reshape(k * t, c), object_index, k, t, prob_kind)


def found_class_components(
    probs: Tensor, object_index: Tensor, num_objects: int, num_passes: int, prob_kind: str
) -> dict[str, Tensor]:
    """:func:`class_components` from the found detections only (:func:`~det_al.scoring.gather.found_probs`).

    Args:
        probs: ``[F, C]``, the class probabilities of the found (object, pass) pairs.
        object_index: ``[F]`` int64, the object of each row, in ``[0, num_objects)``.
        num_objects: ``K``.
        num_passes: ``T``; each of the ``K * T - F`` misses contributes ``background_probs``.

    Returns ``[K]`` tensors in [0, 1], of ``probs``' dtype. The sums over passes run over the
    F found rows (``index_add_``, float64) plus the misses in closed form, so the cost does not
    grow with the misses; the entropies of single passes are taken in ``probs``' dtype.
    """
    k, t, c = num_objects, num_passes, probs.shape[1]
    if k == 0 or t == 0 or c == 0:
        zero = probs.new_zeros(k)
        return {"class_variance": zero, "entropy": zero.clone(), "mutual_information": zero.clone()}
    p = probs.clamp(0.0, 1.0)  # [F, C]
    p64 = p.double()  # the moments in float64, where E[p^2] - mean^2 cancels
    background = background_probs(c, prob_kind).double()  # [C]
    misses = (t - torch.bincount(object_index, minlength=k)).double()[:, None]  # [K, 1]

    def mean_over_passes(found: Tensor, missed: Tensor) -> Tensor:
        """``[K, D]``: the mean over all T passes of ``found`` ``[F, D]`` and ``missed`` ``[D]``."""
        total = torch.zeros(k, found.shape[1], dtype=torch.float64).index_add_(0, object_index, found.double())
        return (total + misses * missed) / t

    mean = mean_over_passes(p64, background)  # [K, C]
    var = (mean_over_passes(p64 * p64, background * background) - mean * mean).clamp(min=0.0)  # [K, C]
    if prob_kind == "softmax":
        variance = var.sum(-1) / max(1.0 - 1.0 / c, 1e-12)
        log_c = math.log(c) if c > 1 else 1.0
        predictive = _entropy(mean)
        expected = mean_over_passes(_entropy(p)[:, None], _entropy(background)[None])[:, 0]
        entropy = predictive / log_c
        mutual = (predictive - expected) / log_c
    else:
        variance = var.amax(-1) / 0.25
        predictive = _binary_entropy(mean)  # [K, C]
        expected = mean_over_passes(_binary_entropy(p), _binary_entropy(background))  # [K, C]
        entropy = predictive.amax(-1) / math.log(2)
        mutual = (predictive - expected).amax(-1) / math.log(2)
    return {
        "class_variance": variance.clamp(0.0, 1.0).to(probs.dtype),
        "entropy": entropy.clamp(0.0, 1.0).to(probs.dtype),
        "mutual_information": mutual.clamp(0.0, 1.0).to(probs.dtype),
    }


def _elementwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of ``a[..., 4]`` with ``b[..., 4]`` pair by pair (1 where both have zero area)."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = box_area(a.reshape(-1, 4)).reshape(a.shape[:-1])
    area_b = box_area(b.reshape(-1, 4)).reshape(b.shape[:-1])
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.ones_like(inter))


def box_components(boxes: Tensor, found: Tensor) -> dict[str, Tensor]:
    """``box_disagreement`` and ``box_spread`` of ``boxes`` ``[K, T, 4]`` over found passes.

    Returns ``[K]`` tensors in [0, 1] (formulas in the module docstring).

    >>> b = torch.tensor([[[0.0, 0, 10, 10], [2, 0, 12, 10]]])
    >>> {n: round(v.item(), 4) for n, v in box_components(b, torch.ones(1, 2, dtype=torch.bool)).items()}
    {'box_disagreement': 0.1818, 'box_spread': 0.05}
    """
    k = boxes.shape[0]
    if boxes.shape[1] == 0:
        zero = boxes.new_zeros(k)
        return {"box_disagreement": zero, "box_spread": zero.clone()}
    w = found.to(boxes.dtype)  # [K, T]
    n = w.sum(1)  # [K]
    several = n >= 2
    n1 = n.clamp(min=1)
    mean = (boxes * w[..., None]).sum(1) / n1[:, None]  # [K, 4]
    iou = _elementwise_iou(boxes, mean[:, None, :].expand_as(boxes))  # [K, T]
    disagreement = 1.0 - (iou * w).sum(1) / n1
    std = (((boxes - mean[:, None, :]) ** 2 * w[..., None]).sum(1) / n1[:, None]).sqrt()  # [K, 4]
    width = (mean[:, 2] - mean[:, 0]).clamp(min=1e-6)
    height = (mean[:, 3] - mean[:, 1]).clamp(min=1e-6)
    size = torch.stack([width, height, width, height], dim=1)
    spread = (std / size).mean(1)
    zero = boxes.new_zeros(k)
    return {
        "box_disagreement": torch.where(several, disagreement.clamp(0.0, 1.0), zero),
        "box_spread": torch.where(several, spread.clamp(0.0, 1.0), zero),
    }


def mask_disagreement(passes: list[Detections], objects: Objects, margin: float = 0.1) -> Tensor:
    """``1 - mean_t IoU(M_t, mean mask)`` over found passes, ``[K]`` (0 with < 2 found or no masks).

    Only for the objects the deterministic pass reports (``objects.anchor >= 0``): their masks are
    the pre-annotations people correct. An object only some passes see gets 0 here, its
    uncertainty is its presence (and the pass masks of such detections need not be computed,
    see ``passes.masks: shared`` in :mod:`det_al.inference.masks`).

    For speed each object's masks are cropped to the union of its found boxes, enlarged by
    ``margin`` of the union's width and height on each side plus 2 pixels (clipped to the
    image): mask probabilities outside that region are taken to be at most 0.5, as they are for
    torchvision, which pastes each mask into its box enlarged by 1/14. Inside the crop the
    IoUs are those of the full masks: box-frame masks (``Detections.image_size``) are pasted
    into the crop only, with the pixels a full paste would give.
    """
    k = len(objects)
    out = torch.zeros(k)
    if not passes or any(p.masks is None for p in passes):
        return out
    several = ((objects.found.sum(1) >= 2) & (objects.anchor >= 0)).nonzero().squeeze(1)  # the work
    found = objects.found[several]  # [S, T]
    boxes = take(passes, "boxes", flat_index(passes, objects)[several], torch.zeros(4)).float()
    inf = torch.tensor(float("inf"))
    lo = torch.where(found[..., None], boxes[..., :2], inf).amin(1)  # [S, 2]
    hi = torch.where(found[..., None], boxes[..., 2:], -inf).amax(1)  # [S, 2]
    union = torch.cat([lo, hi], dim=1)  # [S, 4], the union of each object's found boxes
    done, values = [], []
    for obj, (x0, y0, x1, y1), row in zip(several.tolist(), union.tolist(), objects.index[several].tolist()):
        found_at = [(t, i) for t, i in enumerate(row) if i >= 0]
        height, width = passes[found_at[0][0]].mask_canvas
        dx, dy = margin * (x1 - x0) + 2, margin * (y1 - y0) + 2
        xa, xb = max(int(math.floor(x0 - dx)), 0), min(int(math.ceil(x1 + dx)), width)
        ya, yb = max(int(math.floor(y0 - dy)), 0), min(int(math.ceil(y1 + dy)), height)
        if xb <= xa or yb <= ya:
            continue  # no pixel of the object lies in the image
        # box-frame masks (Detections.image_size) are pasted into the window only
        probs = Detections.gather_window_masks(passes, found_at, (xa, ya, xb, yb)).float().cpu()  # [n, h, w]
        # The n thresholded masks and, last, the mean mask, encoded in one call.
        binary = torch.cat([probs > 0.5, (probs.mean(0) > 0.5)[None]])  # [n + 1, h, w]
        rles = mask_util.encode(np.asfortranarray(binary.permute(1, 2, 0).numpy().view(np.uint8)))
        area = mask_util.area(rles)
        if not area[:-1].any():
            continue  # every pass says "no mask": they agree
        iou = np.asarray(mask_util.iou(rles[:-1], rles[-1:], [0]), dtype=np.float64).reshape(-1)
        iou = np.where((area[:-1] == 0) & (area[-1] == 0), 1.0, iou)  # two empty masks agree
        done.append(obj)
        values.append(float(np.clip(1.0 - iou.mean(), 0.0, 1.0)))
    out[done] = torch.tensor(values)
    return out


def has_masks(anchor: Detections, passes: list[Detections]) -> bool:
    """Whether the model gives masks (the anchor or any pass carries them)."""
    return anchor.masks is not None or any(p.masks is not None for p in passes)


def object_terms(values: dict[str, Tensor], scoring: ScoringConfig, masks: bool) -> dict[str, Tensor]:
    """The terms combined into ``uncertainty``: ``class``, ``box``, ``presence`` (+ ``mask``)."""
    terms = {
        "class": values[CLASS_TERMS[scoring.class_term]],
        "box": values["box_disagreement"],
        "presence": values["presence_uncertainty"],
    }
    if masks:
        terms["mask"] = values["mask_disagreement"]
    return terms


def combine_terms(terms: dict[str, Tensor], weights: dict[str, float] | None) -> Tensor:
    """Weighted mean of the ``[K]`` terms; a missing weight is 0; 0 when no weight applies.

    >>> combine_terms({"class": torch.tensor([1.0]), "box": torch.tensor([0.0])}, {"class": 3, "box": 1})
    tensor([0.7500])
    """
    weights = weights or {}
    total = sum(float(weights.get(name, 0.0)) for name in terms)
    first = next(iter(terms.values()))
    if total <= 0:
        return torch.zeros_like(first)
    combined = torch.zeros_like(first)
    for name, value in terms.items():
        combined = combined + float(weights.get(name, 0.0)) * value
    return combined / total


def score_objects(
    anchor: Detections,
    passes: list[Detections],
    objects: Objects,
    scoring: ScoringConfig,
    masks: bool | None = None,
) -> dict[str, Tensor]:
    """Per-object uncertainty components (module docstring), each a ``[K]`` tensor.

    Args:
        anchor: the deterministic pass's detections.
        passes: the T stochastic passes.
        objects: the matched objects (:func:`det_al.scoring.matching.match_passes`).
        scoring: picks the class term and the weights of ``uncertainty``.
        masks: whether the model gives masks; by default, whether the detections carry them.

    Returns:
        ``class_variance, entropy, mutual_information, box_disagreement, box_spread,
        mask_disagreement, presence, presence_uncertainty, score, label, uncertainty``:
        float ``[K]`` tensors (``label`` int64).
    """
    if scoring.class_term not in CLASS_TERMS:
        raise ValueError(f"class_term must be one of {sorted(CLASS_TERMS)}, got {scoring.class_term!r}")
    g = gather(anchor, passes, objects, probs=False)
    k, t = g.found.shape
    probs, object_index = found_probs(passes, objects)
    values = found_class_components(probs, object_index, k, t, anchor.prob_kind)
    values.update(box_components(g.boxes, g.found))
    masks = has_masks(anchor, passes) if masks is None else masks
    values["mask_disagreement"] = mask_disagreement(passes, objects) if masks else torch.zeros(k)

    n_found = g.found.sum(1).float()
    presence = n_found / t if t else torch.zeros(k)
    values["presence"] = presence
    values["presence_uncertainty"] = (4.0 * presence * (1.0 - presence)).clamp(0.0, 1.0)

    anchored = objects.anchor >= 0
    anchor_at = objects.anchor.clamp(min=0)
    anchor_scores = anchor.scores.float().cpu()[anchor_at] if len(anchor) else torch.zeros(k)
    anchor_labels = anchor.labels.cpu()[anchor_at] if len(anchor) else torch.zeros(k, dtype=torch.int64)
    total = (g.scores * g.found).sum(1) + torch.where(anchored, anchor_scores, torch.zeros(()))
    count = n_found + anchored.float()
    values["score"] = torch.where(count > 0, total / count.clamp(min=1), torch.zeros(()))
    # Expected confidence over every pass (a miss counts 0) and the anchor: an object that
    # flickers into one pass of ten at 0.1 expects 0.01. The min_score filter uses this.
    values["expected_score"] = total / (t + anchored.float()).clamp(min=1)
    values["anchored"] = anchored

    num_labels = max(anchor.num_classes, int(g.labels.max()) + 1 if g.labels.numel() else 1)
    votes = torch.zeros(k, num_labels).scatter_add_(1, g.labels, g.found.float())
    majority = votes.argmax(1) if k else torch.zeros(0, dtype=torch.int64)
    values["label"] = torch.where(anchored, anchor_labels, majority)

    values["uncertainty"] = combine_terms(object_terms(values, scoring, masks), scoring.weights)
    return values
