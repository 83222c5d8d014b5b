"""The stochastic suffix: from the first dropout site on, P passes in one batched call.

Rows are pass-major (pass ``p``, image ``i`` at block ``p * B + i``); each family's raw outputs
are post-processed pass by pass (:mod:`det_al.inference.postprocess`) and mapped back to the
images given to the prefix (:func:`to_original`). See :mod:`det_al.inference.passes` for the
split of each family into prefix and suffix.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import resize_boxes

from det_al.inference import masks as mask_branch
from det_al.inference import certified, grouped, one_stage, restricted
from det_al.inference.candidates import DenseAccumulator
from det_al.inference.detections import Detections
from det_al.inference.dropout import Chunk, MCDropout
from det_al.inference.postprocess import Raw, dense_postprocess, rcnn_postprocess, ssd_postprocess
from det_al.inference.prefix import Prefix

Generators = Sequence[Sequence["torch.Generator | None"]]


def pass_chunks(generators: Generators, rates: Sequence[float], rows: Sequence[int]) -> list[Chunk]:
    """Pass-major row layout: pass p, image i -> ``Chunk(generators[p][i], rates[p], rows[i])``."""
    return [Chunk(g, float(r), n) for gens, r in zip(generators, rates) for g, n in zip(gens, rows)]


def tile(x: Tensor, p_count: int) -> Tensor:
    """``x`` repeated ``p_count`` times along dim 0 (pass-major blocks)."""
    return x.repeat(p_count, *([1] * (x.ndim - 1))) if p_count > 1 else x


def run_suffix(model: nn.Module, prefix: Prefix, control: MCDropout, generators: Generators,
               rates: Sequence[float], masks: str = "exact",
               dense: Sequence[DenseAccumulator] | None = None, choose: bool = False,
               paste: bool = False, tail: "Tail | certified.Certified | None" = None) -> list[list[Detections]]:
    """The stochastic part for P passes in one batched call.

    Args:
        generators: ``[P][B]`` one generator per pass and image (``None`` where the rate is 0).
        rates: ``[P]`` the dropout rate of each pass.
        masks: Mask R-CNN: ``exact`` or ``shared`` (:mod:`det_al.inference.masks`; a call with
            ``choose`` fills ``prefix.shared_masks``).
        dense: ``[B]`` accumulators that receive every candidate's class probabilities of the
            P passes before any threshold (:mod:`det_al.scoring.dense`), or ``None``.
        choose: the call is the deterministic pass: RetinaNet/FCOS accumulators keep the indices
            of its ``max_candidates`` anchors of highest foreground probability (the candidates
            of the stochastic passes); nothing is accumulated.
        paste: masks pasted into the image (the deterministic pass); else kept in the box frame.
        tail: RetinaNet/FCOS/SSD ``passes.tail: candidates`` (:class:`Tail`); RetinaNet with
            channel groups, :class:`~det_al.inference.certified.Certified`; ``None``: exact.

    Returns ``[P][B]`` detections in the coordinates of the images given to the prefix.
    """
    raw = raw_suffix(model, prefix, control, generators, rates, masks, dense, choose, tail)
    return to_original(prefix, raw, paste)


@dataclass(frozen=True)
class Tail:
    """The restricted one-stage tail (``passes.tail: candidates``): how many candidates."""

    max_candidates: int


def raw_suffix(model: nn.Module, prefix: Prefix, control: MCDropout, generators: Generators,
               rates: Sequence[float], masks: str = "exact",
               dense: Sequence[DenseAccumulator] | None = None, choose: bool = False,
               tail: "Tail | certified.Certified | None" = None) -> list[list[Raw]]:
    """:func:`run_suffix` before :func:`to_original`: ``[P][B]`` :class:`Raw` in the prefix's
    resized image coordinates, masks ``[N, 1, M, M]`` in the box frame."""
    chunks = pass_chunks(generators, rates, prefix.rows)
    if prefix.family == "rcnn":
        return _rcnn(model, prefix, control, chunks, generators, rates, masks, dense, choose)
    if prefix.family in ("retinanet", "fcos", "ssd"):
        ssd = prefix.family == "ssd"
        heads = _ssd if ssd else _one_stage
        if isinstance(tail, certified.Certified) and not choose:
            if prefix.certified is None:  # a TTA view: its own deterministic pass first
                heads(model, prefix, control, pass_chunks([[None] * len(prefix.rows)], [0.0], prefix.rows),
                      1, None, True, tail)
            certified_passes = certified.ssd_passes if ssd else certified.passes
            return certified_passes(model, prefix, tail, control.sites, certified.chunks_for(chunks, len(prefix.rows)),
                                    len(rates), dense)
        if tail is not None and not choose:
            if prefix.tail_anchors is None:  # a TTA view: its own deterministic choice first
                heads(model, prefix, control, pass_chunks([[None] * len(prefix.rows)], [0.0], prefix.rows),
                      1, None, True, tail)
            restricted_passes = one_stage.ssd_tail_passes if ssd else one_stage.tail_passes
            return restricted_passes(model, prefix, control.sites, generators, rates, dense, control.groups)
        return heads(model, prefix, control, chunks, len(rates), dense, choose, tail)
    raise ValueError(f"unknown model family {prefix.family!r}")


def _rcnn(model: nn.Module, prefix: Prefix, control: MCDropout, chunks: list[Chunk], generators: Generators,
          rates: Sequence[float], masks: str, dense: Sequence[DenseAccumulator] | None,
          choose: bool) -> list[list[Raw]]:
    p_count, b_count = len(rates), len(prefix.rows)
    x = tile(prefix.site, p_count)
    with control.layout(chunks):
        class_logits, box_regression = model.roi_heads.box_predictor(x)
    probs = F.softmax(class_logits.float(), -1)
    if dense is not None and not choose:
        pieces = probs.split(prefix.rows * p_count)
        for i, acc in enumerate(dense):
            acc.add(torch.stack([pieces[p * b_count + i] for p in range(p_count)], 1),
                    prefix.references[i], prefix.objectness[i] if prefix.objectness else None)
    out = rcnn_postprocess(model, prefix, class_logits.float(), box_regression.float(), p_count, probs)
    if not model.roi_heads.has_mask():
        return out
    if masks != "shared":
        mask_branch.exact_masks(model, prefix, control, generators, rates, out)
        return out
    if choose or (prefix.shared_masks is None and all(r == 0.0 for r in rates)):
        mask_branch.store_shared(model, prefix, control, out[0])
    elif prefix.shared_masks is None:  # a TTA view: its own deterministic detections first
        base = _rcnn(model, prefix, control, pass_chunks([[None] * b_count], [0.0], prefix.rows),
                     [[None] * b_count], [0.0], "shared", None, False)
        mask_branch.store_shared(model, prefix, control, base[0])
    mask_branch.shared_masks(model, prefix, control, generators, rates, out)
    return out


def _one_stage(model: nn.Module, prefix: Prefix, control: MCDropout, chunks: list[Chunk], p_count: int,
               dense: Sequence[DenseAccumulator] | None, choose: bool,
               tail: "Tail | certified.Certified | None" = None) -> list[list[Raw]]:
    fcos = prefix.family == "fcos"
    cls_tower, reg_tower = prefix.site
    cls_head, reg_head = model.head.classification_head, model.head.regression_head
    if isinstance(tail, certified.Certified) and choose:  # the logits as sums of the kept partial outputs
        cls, reg, ctr = [], [], []
        prefix.certified = [[] for _ in prefix.rows]
        for x_cls, x_reg in zip(cls_tower, reg_tower):
            per_image = [certified.prepare(model, tail, x_cls[i], x_reg[i], control.sites) for i in range(len(prefix.rows))]
            cls.append(torch.stack([c for c, _ in per_image]))
            reg.append(torch.stack([level.reg_det.view(-1, *x_reg.shape[-2:]) for _, level in per_image]))
            for kept, (_, level) in zip(prefix.certified, per_image):
                kept.append(level)
    elif _grouped_route(control, p_count, choose, [cls_head.cls_logits, reg_head.bbox_reg,
                                                      *([reg_head.bbox_ctrness] if fcos else [])]):
        # the draws in the hooks' order: every level's cls_logits, then bbox_reg (and bbox_ctrness) per level
        conv = partial(_grouped_conv, control, chunks, p_count)
        cls = [conv(cls_head.cls_logits, "head.classification_head.cls_logits", t) for t in cls_tower]
        reg, ctr = [], []
        for t in reg_tower:
            deltas = conv(reg_head.bbox_reg, "head.regression_head.bbox_reg", t)
            reg.append(F.relu(deltas) if fcos else deltas)
            if fcos:
                ctr.append(conv(reg_head.bbox_ctrness, "head.regression_head.bbox_ctrness", t))
    else:
        with control.layout(chunks):
            cls = [cls_head.cls_logits(tile(t, p_count)) for t in cls_tower]
            reg, ctr = [], []
            for t in reg_tower:
                t = tile(t, p_count)
                reg.append(F.relu(reg_head.bbox_reg(t)) if fcos else reg_head.bbox_reg(t))
                if fcos:
                    ctr.append(reg_head.bbox_ctrness(t))
    num_classes = cls_head.num_classes
    if choose and (dense is not None or tail is not None):
        foreground, top = one_stage.one_stage_foreground(cls, ctr or None, num_classes)  # [B, R] each
        sizes = [int(x.shape[1]) // num_classes * int(x.shape[2]) * int(x.shape[3]) for x in cls]
        if dense is not None:
            one_stage.choose_candidates(dense, foreground)
        if isinstance(tail, certified.Certified):
            for levels, acc in zip(prefix.certified, dense or []):
                certified.add_candidates(model, tail, levels, acc.index, sizes)
        elif tail is not None:
            restricted.choose_anchors(prefix, top > model.score_thresh, foreground, sizes,
                                      tail.max_candidates, [acc.index for acc in dense] if dense else None)
    elif dense is not None:
        one_stage.add_candidates(prefix, dense, cls, ctr or None, num_classes, p_count)
    return dense_postprocess(model, prefix, cls, reg, ctr or None, p_count)


def _ssd(model: nn.Module, prefix: Prefix, control: MCDropout, chunks: list[Chunk], p_count: int,
         dense: Sequence[DenseAccumulator] | None, choose: bool,
         tail: "Tail | certified.Certified | None" = None) -> list[list[Raw]]:
    head = model.head
    convs = [*head.classification_head.module_list, *head.regression_head.module_list]
    partials = None
    if isinstance(tail, certified.Certified) and choose:  # the outputs as sums of the partial outputs
        head_outputs, can_detect, partials = certified.ssd_prepare(model, tail, prefix.site, control.sites)
    elif control.sites == ("head",) and _grouped_route(control, p_count, choose, convs):
        head_outputs = _ssd_grouped(head, control, chunks, prefix.site)
    else:
        with control.layout(chunks):
            head_outputs = head([tile(f, p_count) for f in prefix.site])
    if choose and tail is not None:  # the restricted tail's anchors (and then the dense candidates' too)
        probs = F.softmax(head_outputs["cls_logits"].float(), dim=-1)  # [B, R, K]
        foreground = 1.0 - probs[..., 0]
        if dense is not None:  # the restricted passes give only these anchors' probabilities
            one_stage.choose_candidates(dense, foreground)
        _, sizes = one_stage.ssd_anchor_counts(model, prefix.site)
        chosen = [acc.index for acc in dense] if dense else None
        if partials is not None:  # every anchor that can detect in some pass, and the dense candidates
            none = [can_detect.new_zeros(0, dtype=torch.long)] * len(prefix.rows)
            restricted.choose_anchors(prefix, can_detect, foreground, sizes, 1, chosen or none)
            prefix.certified = certified.ssd_keep(model, partials, prefix.tail_anchors)
        else:
            restricted.choose_anchors(prefix, (probs[..., 1:] > model.score_thresh).any(-1), foreground, sizes,
                                      tail.max_candidates, chosen)
    if dense is not None and not choose:
        probs = F.softmax(head_outputs["cls_logits"].float(), dim=-1)  # [P * B, R, C]
        b_count = len(prefix.rows)
        for i, acc in enumerate(dense):
            acc.add(probs[i::b_count].transpose(0, 1), prefix.references[i])
    return ssd_postprocess(model, prefix, head_outputs, p_count)


def _grouped_route(control: MCDropout, p_count: int, choose: bool, convs: Sequence[nn.Module]) -> bool:
    """Whether a one-stage suffix computes channel-group dropout as weighted sums of per-group
    outputs (:mod:`det_al.inference.grouped`): groups set, several passes, plain convolutions.
    One pass (the plain path) runs the hooks, the reference the fast path is tested against."""
    return control.groups > 0 and p_count > 1 and not choose and all(grouped.decomposable(c) for c in convs)


def _grouped_conv(control: MCDropout, chunks: list[Chunk], p_count: int, conv: nn.Conv2d, site: str,
                  x: Tensor) -> Tensor:
    """``conv`` over ``x`` ``[B, C, H, W]`` for P passes, ``[P * B, O, H', W']``: with group
    dropout when ``site`` is a dropout site (the chunks' draws, as its hook makes them), else
    once and repeated."""
    if site not in control.sites:
        return tile(conv(x), p_count)
    return grouped.conv_passes(conv, x, grouped.group_factors(chunks, control.groups, x.device))


def _ssd_grouped(head: nn.Module, control: MCDropout, chunks: list[Chunk], features: list[Tensor]) -> dict[str, Tensor]:
    """``SSDHead.forward`` for P passes with group dropout on its input (the site ``head``): one
    draw per level and chunk, as the hook drops the list of feature maps, read by both convs."""
    cls_head, reg_head = head.classification_head, head.regression_head
    outputs: dict[str, list[Tensor]] = {"cls_logits": [], "bbox_regression": []}
    for level, f in enumerate(features):
        factors = grouped.group_factors(chunks, control.groups, f.device)
        for key, scoring in (("cls_logits", cls_head), ("bbox_regression", reg_head)):
            y = grouped.conv_passes(scoring.module_list[level], f, factors)
            n, _, height, width = y.shape  # SSDScoringHead._get_result_from_module_list's layout
            y = y.view(n, -1, scoring.num_columns, height, width).permute(0, 3, 4, 1, 2)
            outputs[key].append(y.reshape(n, -1, scoring.num_columns))
    return {key: torch.cat(value, dim=1) for key, value in outputs.items()}


def to_original(prefix: Prefix, out: list[list[Raw]], paste: bool = False) -> list[list[Detections]]:
    """``transform.postprocess``: boxes back to the input image size; masks pasted into it with
    ``paste`` (the deterministic pass), else kept in the box frame (``Detections.image_size``)."""
    result = []
    for row in out:
        dets = []
        for i, raw in enumerate(row):
            size = prefix.original_sizes[i]
            boxes = resize_boxes(raw.boxes, prefix.image_sizes[i], size)
            masks, frame = raw.masks, None
            if raw.masks is not None and paste:
                if raw.masks.shape[0] == 0:
                    masks = boxes.new_zeros((0, *size))
                else:
                    masks = paste_masks_in_image(raw.masks, boxes, size)[:, 0]
            elif raw.masks is not None:
                masks, frame = raw.masks[:, 0], size
            dets.append(Detections(boxes, raw.scores, raw.labels, raw.probs, masks, raw.kind, frame))
        result.append(dets)
    return result
