"""RetinaNet and SSD passes with channel-group dropout, computed only where a pass can detect.

With ``passes.dropout_groups`` N > 0 (:mod:`det_al.inference.grouped`) a pass's class logit
``z = b + sum_g f_g * Y_g`` has factors ``f_g`` in ``{0, s}`` (``s = 1 / (1 - rate)``), so no
pass can lift it above ``b + s * sum_g max(Y_g, 0)``. The deterministic pass computes the N
partial outputs ``Y_g`` once (and its own logits as their sum), keeps the (anchor, class)
entries whose bound reaches the score threshold (a few percent of RetinaNet's ~4.5 M at 512 px)
with their partial outputs, and each pass then combines N values per kept entry instead of
running the convolution: the pass's detections are torchvision's post-processing of all its
logits, since every entry left out is below the threshold in every pass. Box deltas, each
detection's class-probability vector and those of the dense candidates come from partial outputs
at their anchors, computed from the towers' 3x3 patches there.

SSD (:func:`ssd_prepare`, :func:`ssd_passes`) scores a softmax, so the unit is the anchor:
each logit lies between ``b + s * sum_g min(Y_g, 0)`` and ``b + s * sum_g max(Y_g, 0)``, which
bounds every class probability (:func:`_ssd_can_detect`); the passes evaluate the anchors whose
bound reaches the threshold, and the dense candidates, as ``passes.tail: candidates`` does.

Used for RetinaNet and SSD when ``passes.dropout_groups`` > 0 and ``passes.tail`` is ``auto``
(:func:`det_al.inference.passes._tail`); FCOS scores ``sqrt(p * centerness)``, for which such a
bound keeps most entries: it takes the dense grouped path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import boxes as box_ops

from det_al.inference import one_stage
from det_al.inference.candidates import DenseAccumulator
from det_al.inference.dropout import Chunk
from det_al.inference.grouped import group_factors, partials, weight_columns
from det_al.inference.postprocess import Raw, logit_of, sorted_positions, ssd_detections
from det_al.inference.prefix import Prefix
from det_al.inference.restricted import neighbourhoods

CLS_SITE = "head.classification_head.cls_logits"
REG_SITE = "head.regression_head.bbox_reg"

# The partial outputs prepare computes at a time (float values): small enough to stay in cache
# while their sum, positive part and kept entries are taken (16 MB in float32; smaller blocks measured
# slower, larger no faster).
PREPARE_VALUES = 1 << 22

# Slack on the bound (logit units): the bound and a pass's logit are sums in different orders.
MARGIN = 1e-3


@dataclass(frozen=True)
class Certified:
    """The mode: ``groups`` channel groups, ``scale`` the largest keep factor of the passes."""

    groups: int
    scale: float


@dataclass
class Level:
    """One image's level, kept by the deterministic pass for the stochastic ones.

    Attributes:
        x_cls, x_reg: ``[C, H, W]`` the inputs of ``cls_logits`` and ``bbox_reg`` (the towers' outputs).
        entries: ``[n]`` sorted flat indices ``channel * L + position`` (``L = H * W``) of the
            entries whose bound reaches the threshold; ``values`` ``[N, n]`` their partial outputs.
        reg_det: ``[A * 4, L]`` the deterministic box deltas (every pass's, without dropout there).
        candidates: ``[N, m, K]`` partial outputs at the level's dense candidate anchors
            ``candidate_anchors`` ``[m]`` (sorted), or ``None``.
    """

    x_cls: Tensor
    x_reg: Tensor
    entries: Tensor
    values: Tensor
    reg_det: Tensor
    candidates: Tensor | None = None
    candidate_anchors: Tensor | None = None

    @property
    def positions(self) -> int:
        return int(self.x_cls.shape[-2]) * int(self.x_cls.shape[-1])


def _patches(x: Tensor, positions: Tensor) -> Tensor:
    """``[C * 9, n]``: the 3x3 patches of ``x`` ``[C, H, W]`` (zero padding) at flat ``positions``,
    in im2col order (what ``unfold`` gives at those columns)."""
    channels, height, width = x.shape
    index = neighbourhoods(positions, height, width)  # [n, 9], H * W = the zero column
    flat = torch.cat([x.reshape(channels, height * width), x.new_zeros((channels, 1))], 1)
    return flat.index_select(1, index.reshape(-1)).view(channels, -1, 9).transpose(1, 2).reshape(channels * 9, -1)


def prepare(model: nn.Module, mode: Certified, x_cls: Tensor, x_reg: Tensor, sites: Sequence[str]) -> tuple[Tensor, Level]:
    """One image's level in the deterministic pass: its class logits ``[A * K, H, W]`` (the sum of
    the partial outputs) and the :class:`Level` kept.

    ``x_cls`` / ``x_reg`` ``[C, H, W]``: the towers' outputs, the inputs of ``cls_logits`` / ``bbox_reg``."""
    cls_conv = model.head.classification_head.cls_logits
    height, width = int(x_cls.shape[-2]), int(x_cls.shape[-1])
    cols = torch.nn.functional.unfold(x_cls[None], 3, padding=1)[0]  # [C * 9, L]
    weight, bounds = weight_columns(cls_conv, mode.groups)
    out_channels, positions = int(weight.shape[0]), int(cols.shape[1])
    bias = cls_conv.bias.to(cols.dtype)
    threshold = logit_of(model.score_thresh) - MARGIN
    logits = cols.new_empty((out_channels, positions))
    entries, values = [], []
    block = max(1, min(out_channels, PREPARE_VALUES // max(1, mode.groups * positions)))
    dropped = CLS_SITE in sites
    part = cols.new_empty((mode.groups, block, positions))
    for start in range(0, out_channels, block):
        stop = min(start + block, out_channels)
        total, positive = logits[start:stop], cols.new_zeros((stop - start, positions))
        clipped = torch.empty_like(positive)
        total.copy_(bias[start:stop, None].expand_as(total))
        for g in range(mode.groups):  # each group's output, then its sum and positive part while in cache
            lo, hi = bounds[g], bounds[g + 1]
            y = part[g, : stop - start]
            if hi > lo:
                torch.matmul(weight[start:stop, lo:hi].to(cols.dtype), cols[lo:hi], out=y)
            else:
                y.zero_()
            total += y
            if dropped:
                positive += torch.clamp(y, min=0, out=clipped)
        bound = bias[start:stop, None] + mode.scale * positive if dropped else total
        flat = torch.where(bound.flatten() > threshold)[0]
        entries.append(flat + start * positions)
        # index_select: advanced indexing of the columns costs several times more
        values.append(part[:, : stop - start].reshape(mode.groups, -1).index_select(1, flat))
    reg_det = model.head.regression_head.bbox_reg(x_reg[None])[0].flatten(1)  # [A * 4, L]
    level = Level(x_cls, x_reg, torch.cat(entries), torch.cat(values, 1), reg_det)
    return logits.view(out_channels, height, width), level


def add_candidates(model: nn.Module, mode: Certified, levels: list[Level], index: Tensor, sizes: Sequence[int]) -> None:
    """Keep the partial outputs at the dense candidates ``index`` (sorted anchor ids of the image,
    ``sizes`` anchors per level) in each :class:`Level`."""
    conv = model.head.classification_head.cls_logits
    a_count = conv.out_channels // model.head.classification_head.num_classes
    start = 0
    for level, size in zip(levels, sizes):
        anchors = index[(index >= start) & (index < start + size)] - start
        start += size
        level.candidate_anchors = anchors
        level.candidates = _anchor_partials(conv, mode.groups, level.x_cls, anchors, a_count)


def _anchor_partials(conv: nn.Conv2d, groups: int, x: Tensor, anchors: Tensor, a_count: int) -> Tensor:
    """``[N, m, W]``: the partial outputs of ``conv`` over ``x`` ``[C, H, W]`` at ``anchors``
    (level anchor ids ``position * A + a``), the W = ``out_channels / A`` outputs of each."""
    width = conv.out_channels // a_count
    out = x.new_zeros((groups, int(anchors.shape[0]), width))
    positions, kinds = anchors // a_count, anchors % a_count
    for a in torch.unique(kinds).tolist():
        rows = torch.where(kinds == a)[0]
        weight, bounds = weight_columns(conv, groups, slice(a * width, (a + 1) * width))
        out[:, rows] = partials(weight, bounds, _patches(x, positions[rows])).transpose(1, 2)
    return out


def _combine(values: Tensor, factors: Tensor) -> Tensor:
    """``[P, ...]``: ``factors`` ``[P, N]`` times ``values`` ``[N, ...]`` summed over the groups."""
    shape = (int(factors.shape[0]), *values.shape[1:])
    if values.numel() == 0:
        return values.new_zeros(shape)
    return torch.matmul(factors.to(values.dtype), values.reshape(values.shape[0], -1)).view(shape)


def passes(model: nn.Module, prefix: Prefix, mode: Certified, sites: Sequence[str], chunks_of, p_count: int,
           dense: Sequence[DenseAccumulator] | None) -> list[list[Raw]]:
    """``[P][B]`` :class:`Raw`: the stochastic passes from the kept :class:`Level` s.

    ``chunks_of(i)``: image ``i``'s P chunks (its generators and rates), whose group factors are
    drawn as the hooks draw them: every level's ``cls_logits``, then every level's ``bbox_reg``.
    Per pass and level, torchvision's threshold and top-k over the kept entries; then the box
    deltas of every pass's top-k anchors at once (partial outputs at their union), decoding and
    NMS per pass; then the class-probability vectors of every pass's detections at once."""
    head = model.head.classification_head
    num_classes = head.num_classes
    a_count = head.cls_logits.out_channels // num_classes
    bias = head.cls_logits.bias
    class_bias = bias.view(a_count, num_classes)
    reg_conv = model.head.regression_head.bbox_reg
    reg_bias = reg_conv.bias.view(a_count, 4)
    threshold = logit_of(model.score_thresh)
    out: list[list[Raw]] = [[] for _ in range(p_count)]
    for i, levels in enumerate(prefix.certified):
        chunks = chunks_of(i)
        device = levels[0].x_cls.device
        ones = torch.ones((p_count, mode.groups), device=device)
        cls_f = [group_factors(chunks, mode.groups, device) if CLS_SITE in sites else ones for _ in levels]
        reg_f = [group_factors(chunks, mode.groups, device) if REG_SITE in sites else None for _ in levels]
        logits = [bias[lv.entries // lv.positions] + _combine(lv.values, f) for lv, f in zip(levels, cls_f)]
        if dense is not None and dense[i].index is not None:
            probs = [torch.sigmoid(class_bias[lv.candidate_anchors % a_count] + _combine(lv.candidates, f))
                     for lv, f in zip(levels, cls_f)]  # [P, m, K]
            dense[i].add(torch.cat(probs, 1)[..., 1:].transpose(0, 1), prefix.references[i][dense[i].index])
        # threshold and top-k: [P][level] (anchor, label, score)
        top = []
        for p in range(p_count):
            row = []
            for level, lv in enumerate(levels):
                keep = torch.where(logits[level][p] > threshold)[0]
                anchor, label, order = sorted_positions(lv.entries[keep], a_count, num_classes, lv.positions)
                score = torch.sigmoid(logits[level][p][keep][order])
                score, best = score.topk(min(model.topk_candidates, int(score.shape[0])))
                row.append((anchor[best], label[best], score))
            top.append(row)
        # box deltas at the union of the top-k anchors, per level
        deltas_at = []
        reg_weight, reg_bounds = weight_columns(reg_conv, mode.groups)
        for level, lv in enumerate(levels):
            union = torch.unique(torch.cat([row[level][0] for row in top]))
            if reg_f[level] is None:
                position, kind = union // a_count, union % a_count
                rows = (kind[:, None] * 4 + torch.arange(4, device=device)) * lv.positions + position[:, None]
                deltas_at.append((union, lv.reg_det.flatten()[rows][None].expand(p_count, -1, -1)))
            else:  # all A * 4 outputs at each position the union reads: one product, no per-anchor loop
                spots, column = torch.unique(union // a_count, return_inverse=True)
                part = partials(reg_weight, reg_bounds, _patches(lv.x_reg, spots)).view(mode.groups, a_count, 4, -1)
                part = part[:, union % a_count, :, column]  # [u, N, 4]
                deltas_at.append((union, reg_bias[union % a_count] + _combine(part.transpose(0, 1), reg_f[level])))
        anchors = prefix.references[i].split([a_count * lv.positions for lv in levels])
        found = []
        for p, row in enumerate(top):
            boxes, scores, labels, where = [], [], [], []
            for level, (anchor, label, score) in enumerate(row):
                union, deltas = deltas_at[level]
                decoded = model.box_coder.decode_single(deltas[p][torch.searchsorted(union, anchor)],
                                                        anchors[level][anchor])
                boxes.append(box_ops.clip_boxes_to_image(decoded, prefix.image_sizes[i]))
                scores.append(score)
                labels.append(label)
                where.append(torch.stack([torch.full_like(anchor, level), anchor], 1))
            boxes_all, scores_all, labels_all = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
            keep = box_ops.batched_nms(boxes_all, scores_all, labels_all, model.nms_thresh)[: model.detections_per_img]
            found.append((boxes_all[keep], scores_all[keep], labels_all[keep], torch.cat(where)[keep]))
        # the class-probability vectors: every pass's detections' anchors' partial outputs at once
        union = torch.cat([w for *_, w in found])
        class_parts = []
        for level, lv in enumerate(levels):
            kept = torch.unique(union[union[:, 0] == level, 1])  # sorted
            class_parts.append((kept, _anchor_partials(head.cls_logits, mode.groups, lv.x_cls, kept, a_count)))
        for p, (boxes, scores, labels, where) in enumerate(found):
            probs = torch.empty((int(where.shape[0]), num_classes), device=device)
            for level, (kept, part) in enumerate(class_parts):
                rows = torch.where(where[:, 0] == level)[0]
                if rows.numel():
                    at = torch.searchsorted(kept, where[rows, 1])
                    logits_at = class_bias[where[rows, 1] % a_count] + _combine(part[:, at], cls_f[level][p : p + 1])[0]
                    probs[rows] = torch.sigmoid(logits_at).float()
            out[p].append(Raw(boxes, scores, labels, probs, "sigmoid"))
    return out


# --------------------------------------------------------------------------- SSD

SSD_SITE = "head"


def ssd_prepare(model: nn.Module, mode: Certified, features: Sequence[Tensor],
                sites: Sequence[str]) -> tuple[dict[str, Tensor], Tensor, list[list[tuple[Tensor, Tensor]]]]:
    """SSD's deterministic pass from the partial outputs of its head (site ``head``: one draw
    per level, read by the class and the box convolution).

    Returns ``SSDHead``'s outputs (``cls_logits`` ``[B, R, K]``, ``bbox_regression`` ``[B, R, 4]``),
    ``[B, R]`` whether an anchor can detect in some pass (:func:`_ssd_can_detect`), and
    ``[B][level]`` the partial outputs of both convolutions (``[N, A * K, L]``, ``[N, A * 4, L]``)
    for :func:`ssd_keep`."""
    head = model.head
    cls_head, reg_head = head.classification_head, head.regression_head
    num_classes = cls_head.num_columns
    dropped = SSD_SITE in sites
    outputs: dict[str, list[Tensor]] = {"cls_logits": [], "bbox_regression": []}
    can_detect, kept_parts = [], [[] for _ in range(int(features[0].shape[0]))]
    for level, f in enumerate(features):
        per_key: dict[str, list[Tensor]] = {"cls_logits": [], "bbox_regression": []}
        masks = []
        for i in range(int(f.shape[0])):
            cols = torch.nn.functional.unfold(f[i : i + 1], 3, padding=1)[0]
            pair = []
            for key, scoring, width in (("cls_logits", cls_head, num_classes), ("bbox_regression", reg_head, 4)):
                conv = scoring.module_list[level]
                weight, bounds = weight_columns(conv, mode.groups)
                part = partials(weight, bounds, cols)  # [N, A * W, L]
                pair.append(part)
                det = part.sum(0) + conv.bias.to(part.dtype)[:, None]
                a_count = conv.out_channels // width
                # SSDScoringHead._get_result_from_module_list's layout: anchor (y * W + x) * A + a
                per_key[key].append(det.view(a_count, width, -1).permute(2, 0, 1).reshape(-1, width))
            masks.append(_ssd_can_detect(pair[0], cls_head.module_list[level].bias, num_classes,
                                         mode.scale if dropped else 0.0, model.score_thresh))
            kept_parts[i].append((pair[0], pair[1]))
        for key, value in per_key.items():
            outputs[key].append(torch.stack(value))
        can_detect.append(torch.stack(masks))
    return ({key: torch.cat(value, 1) for key, value in outputs.items()}, torch.cat(can_detect, 1), kept_parts)


def _ssd_can_detect(part: Tensor, bias: Tensor, num_classes: int, scale: float, score_thresh: float) -> Tensor:
    """``[L * A]`` (anchor order): whether a class ``k >= 1`` of the anchor can reach a softmax
    probability above ``score_thresh`` in some pass.

    With factors in ``{0, s}`` each logit lies in ``[lo_j, hi_j]``: ``b_j + s * sum_g min(Y_gj, 0)``
    and ``b_j + s * sum_g max(Y_gj, 0)`` (``scale`` 0: no dropout, both the logit itself), so
    ``p_k <= exp(hi_k) / (exp(hi_k) + sum_{j != k} exp(lo_j))``. Rounding only ever raises the
    bound (the sum over the others is clamped at 0)."""
    groups, channels, positions = part.shape
    y = part.view(groups, -1, num_classes, positions).double()  # [N, A, K, L]
    b = bias.view(-1, num_classes)[:, :, None].double()  # [A, K, 1]
    if scale > 0:
        positive = y.clamp(min=0).sum(0)
        hi, lo = b + scale * positive, b + scale * (y.sum(0) - positive)
    else:
        hi = lo = b + y.sum(0)
    top = lo.amax(1, keepdim=True)
    others = ((lo - top).exp().sum(1, keepdim=True) - (lo - top).exp()).clamp(min=0)  # [A, K, L]
    log_bound = (hi - top) - torch.logaddexp(hi - top, others.log())
    can = (log_bound[:, 1:] > math.log(score_thresh) - MARGIN).any(1) if score_thresh > 0 else \
        torch.ones(log_bound.shape[0], positions, dtype=torch.bool, device=part.device)
    return can.t().reshape(-1)


def ssd_keep(model: nn.Module, parts: list[list[tuple[Tensor, Tensor]]],
             anchors: list[list[Tensor]]) -> list[list[tuple[Tensor, Tensor]]]:
    """``[B][level]`` the partial outputs ``([N, n, K], [N, n, 4])`` at each level's chosen ``anchors``."""
    num_classes = model.head.classification_head.num_columns
    kept = []
    for image_partials, image_anchors in zip(parts, anchors):
        row = []
        for (cls_part, reg_part), chosen in zip(image_partials, image_anchors):
            groups, positions = int(cls_part.shape[0]), int(cls_part.shape[-1])
            a_count = int(cls_part.shape[1]) // num_classes
            kind, position = chosen % a_count, chosen // a_count
            cls_at = cls_part.new_empty((groups, int(chosen.shape[0]), num_classes))
            reg_at = reg_part.new_empty((groups, int(chosen.shape[0]), 4))
            for a in torch.unique(kind).tolist():  # index_select per anchor kind: a two-index gather costs more
                rows = torch.where(kind == a)[0]
                at = position[rows]
                cls_at.index_copy_(1, rows, cls_part.view(groups, a_count, num_classes, positions)[:, a]
                                   .index_select(2, at).transpose(1, 2))
                reg_at.index_copy_(1, rows, reg_part.view(groups, a_count, 4, positions)[:, a]
                                   .index_select(2, at).transpose(1, 2))
            row.append((cls_at, reg_at))
        kept.append(row)
    return kept


def ssd_passes(model: nn.Module, prefix: Prefix, mode: Certified, sites: Sequence[str], chunks_of, p_count: int,
               dense: Sequence[DenseAccumulator] | None) -> list[list[Raw]]:
    """``[P][B]`` :class:`Raw`: SSD's stochastic passes at the anchors that can detect (and the
    dense candidates), from their partial outputs; torchvision's post-processing over those."""
    head = model.head
    num_classes = head.classification_head.num_columns
    a_counts, sizes = one_stage.ssd_anchor_counts(model, prefix.site)
    out: list[list[Raw]] = [[] for _ in range(p_count)]
    for i, kept in enumerate(prefix.certified):
        chunks = chunks_of(i)
        device = prefix.site[0].device
        levels = []
        for level, ((cls_part, reg_part), anchors) in enumerate(zip(kept, prefix.tail_anchors[i])):
            factors = (group_factors(chunks, mode.groups, device) if SSD_SITE in sites
                       else torch.ones((p_count, mode.groups), device=device))
            kind = anchors % a_counts[level]
            cls_bias = head.classification_head.module_list[level].bias.view(-1, num_classes)[kind]
            reg_bias = head.regression_head.module_list[level].bias.view(-1, 4)[kind]
            logits = cls_bias + _combine(cls_part, factors)  # [P, n, K]
            deltas = reg_bias + _combine(reg_part, factors)
            levels.append((torch.softmax(logits.float(), -1), deltas.float(), anchors))
        rows = one_stage.global_rows(levels, sizes)
        if dense is not None:
            one_stage.add_restricted(prefix, dense[i], i, levels, rows, first=0)
        probs = torch.cat([pr for pr, _, _ in levels], 1)
        deltas = torch.cat([d for _, d, _ in levels], 1)
        for p in range(p_count):
            out[p].append(ssd_detections(model, probs[p], deltas[p], prefix.references[i][rows], prefix.image_sizes[i]))
    return out


def chunks_for(chunks: list[Chunk], b_count: int):
    """``chunks_of`` for :func:`passes`: image ``i``'s chunks of pass-major ``chunks``."""
    return lambda i: chunks[i::b_count]
