"""The one-stage heads (RetinaNet, FCOS, SSD) in the stochastic passes.

Dense candidates: the deterministic pass ranks every anchor by its foreground probability and
keeps the ``passes.dense_candidates`` best (:func:`choose_candidates`); each chunk of stochastic
passes adds those anchors' class probabilities to the image's accumulator (:func:`add_candidates`,
:mod:`det_al.inference.candidates`).

Restricted tail (``passes.tail: candidates``): the stochastic passes evaluate the heads' last
convolutions only at the anchors the deterministic pass chose (:mod:`det_al.inference.restricted`)
and post-process those (:func:`tail_passes` for RetinaNet / FCOS, :func:`ssd_tail_passes`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import boxes as box_ops

from det_al.inference.candidates import DenseAccumulator
from det_al.inference.postprocess import Raw, ssd_detections
from det_al.inference.prefix import Prefix
from det_al.inference.restricted import conv_at


def one_stage_probs(cls: list[Tensor], ctr: list[Tensor] | None, num_classes: int, first: int = 1) -> Tensor:
    """``[N, R, C - first]``: every anchor's per-class probabilities (the quantity the family
    scores detections with; ``first=1`` leaves the background column out), in torchvision's
    ``[H * W * A]`` anchor order."""
    levels = []
    for level, logits in enumerate(cls):
        n, _, h, w = logits.shape
        a_count = logits.shape[1] // num_classes
        x = logits.float().view(n, a_count, num_classes, h, w).permute(0, 3, 4, 1, 2)
        p = torch.sigmoid(x.reshape(n, h * w * a_count, num_classes)[..., first:])
        if ctr is not None:
            c = ctr[level].float().view(n, a_count, h, w).permute(0, 2, 3, 1).reshape(n, h * w * a_count, 1)
            p = torch.sqrt(p * torch.sigmoid(c))
        levels.append(p)
    return torch.cat(levels, 1)


def one_stage_foreground(cls: list[Tensor], ctr: list[Tensor] | None, num_classes: int) -> tuple[Tensor, Tensor]:
    """``([B, R], [B, R])``: every anchor's highest probability over the classes (column 0 left out,
    or the only column) and over all columns, as :func:`one_stage_probs` would give them, from the
    highest logit (the probability is increasing in it) without squashing every logit."""
    foreground, top = [], []
    for level, logits in enumerate(cls):
        n, _, h, w = logits.shape
        a_count = logits.shape[1] // num_classes
        x = logits.float().view(n, a_count, num_classes, h, w)
        both = [x[:, :, 1:].amax(2) if num_classes > 1 else x[:, :, 0], x.amax(2)]  # [n, A, h, w]
        for out, m in zip((foreground, top), both):
            p = torch.sigmoid(m.permute(0, 2, 3, 1).reshape(n, h * w * a_count))
            if ctr is not None:
                c = ctr[level].float().view(n, a_count, h, w).permute(0, 2, 3, 1).reshape(n, h * w * a_count)
                p = torch.sqrt(p * torch.sigmoid(c))
            out.append(p)
    return torch.cat(foreground, 1), torch.cat(top, 1)


def choose_candidates(dense: Sequence[DenseAccumulator], foreground: Tensor) -> None:
    """The deterministic pass picks each image's candidates: its ``max_candidates`` anchors of
    highest ``foreground`` probability ``[B, R]`` (all with ``max_candidates`` 0), in anchor order."""
    for i, acc in enumerate(dense):
        r = int(foreground.shape[1])
        m = r if acc.max_candidates <= 0 else min(acc.max_candidates, r)
        acc.index = foreground[i].topk(m).indices.sort().values


def add_candidates(prefix: Prefix, dense: Sequence[DenseAccumulator], cls: list[Tensor],
                   ctr: list[Tensor] | None, num_classes: int, p_count: int) -> None:
    """The chosen candidates' per-class probabilities of P passes (:func:`one_stage_probs`),
    gathered from the heads' native ``[P * B, A * K, H, W]`` layout, to ``dense``."""
    b_count = len(prefix.rows)
    for i, acc in enumerate(dense):
        if acc.index is None:  # no deterministic choice: every anchor
            probs = one_stage_probs([x[i::b_count] for x in cls], [c[i::b_count] for c in ctr] if ctr else None,
                                     num_classes)
            acc.add(probs.transpose(0, 1), prefix.references[i])
            continue
        pieces, start = [], 0
        for level, logits in enumerate(cls):
            _, channels, h, w = logits.shape
            a_count = channels // num_classes
            stop = start + h * w * a_count
            index = acc.index[(acc.index >= start) & (acc.index < stop)] - start
            start = stop
            pos, a = torch.div(index, a_count, rounding_mode="floor"), index % a_count
            x = logits[i::b_count].float().view(p_count, a_count, num_classes, h * w)
            p = torch.sigmoid(x[:, a, 1:, pos])  # [m, P, C - 1]
            if ctr is not None:
                c = ctr[level][i::b_count].float().view(p_count, a_count, h * w)[:, a, pos]  # [P, m]
                p = torch.sqrt(p * torch.sigmoid(c).T[..., None])
            pieces.append(p)
        acc.add(torch.cat(pieces), prefix.references[i][acc.index])


# --------------------------------------------------------------------------- restricted tail


def tail_passes(model: nn.Module, prefix: Prefix, sites: Sequence[str], generators, rates: Sequence[float],
                dense: Sequence[DenseAccumulator] | None, channel_groups: int = 0) -> list[list[Raw]]:
    """RetinaNet / FCOS stochastic passes with the restricted tail: ``[P][B]`` :class:`Raw`
    (``channel_groups``: channel-group dropout, :mod:`det_al.inference.dropout`)."""
    fcos = prefix.family == "fcos"
    cls_head, reg_head = model.head.classification_head, model.head.regression_head
    num_classes = cls_head.num_classes
    cls_tower, reg_tower = prefix.site
    drop = {name: f"head.{name}" in sites for name in
            ("classification_head.cls_logits", "regression_head.bbox_reg", "regression_head.bbox_ctrness")}
    p_count = len(rates)
    a_count = int(cls_head.cls_logits.out_channels) // num_classes
    sizes = [a_count * int(t.shape[-2]) * int(t.shape[-1]) for t in cls_tower]
    out: list[list[Raw]] = [[] for _ in range(p_count)]
    for i in range(len(prefix.rows)):
        gens = [generators[p][i] for p in range(p_count)]
        levels = []
        for level, anchors in enumerate(prefix.tail_anchors[i]):
            positions, groups = anchors // a_count, anchors % a_count
            cls_site = (cls_tower[level][i], positions, groups)
            reg_site = (reg_tower[level][i], positions, groups)
            logits = conv_at(*cls_site, [(cls_head.cls_logits, num_classes)], gens, rates,
                             drop["classification_head.cls_logits"], channel_groups=channel_groups)[0].float()
            if fcos:  # two sites on the regression tower: one gather, a draw for each conv
                regression = [(reg_head.bbox_reg, 4), (reg_head.bbox_ctrness, 1)]
                flags = [drop["regression_head.bbox_reg"], drop["regression_head.bbox_ctrness"]]
                deltas, centerness = conv_at(*reg_site, regression, gens, rates, flags, shared=False, channel_groups=channel_groups)
                deltas = F.relu(deltas.float())
                probs = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(centerness.float()))
            else:
                deltas = conv_at(*reg_site, [(reg_head.bbox_reg, 4)], gens, rates,
                                 drop["regression_head.bbox_reg"], channel_groups=channel_groups)[0].float()
                probs = torch.sigmoid(logits)
            levels.append((probs, deltas, anchors))
        if dense is not None:
            add_restricted(prefix, dense[i], i, levels, global_rows(levels, sizes))
        for p in range(p_count):
            level_pass = [(pr[p], d[p], a) for pr, d, a in levels]
            out[p].append(_tail_postprocess(model, prefix, i, level_pass, sizes, fcos))
    return out


def global_rows(levels: list[tuple[Tensor, Tensor, Tensor]], sizes: Sequence[int]) -> Tensor:
    """The restricted anchors of every level as the image's anchor ids (sorted)."""
    offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0).tolist()
    return torch.cat([a + o for (_, _, a), o in zip(levels, offsets)])


def add_restricted(prefix: Prefix, acc: DenseAccumulator, i: int, levels: list[tuple[Tensor, Tensor, Tensor]],
                    rows: Tensor, first: int = 1) -> None:
    """The accumulator's candidates' probabilities ``[m, P, K - first]`` from the restricted
    outputs at the anchor ids ``rows`` (sigmoid heads leave the background column out, SSD's
    softmax keeps it)."""
    probs = torch.cat([pr for pr, _, _ in levels], 1)  # [P, n, K]
    index = acc.index if acc.index is not None else rows
    where = torch.searchsorted(rows, index)
    acc.add(probs[:, where, first:].transpose(0, 1), prefix.references[i][index])


def _tail_postprocess(model: nn.Module, prefix: Prefix, i: int, levels: list[tuple[Tensor, Tensor, Tensor]],
                      sizes: list[int], fcos: bool) -> Raw:
    """torchvision's RetinaNet / FCOS ``postprocess_detections`` over the restricted anchors of one pass."""
    anchors = prefix.references[i].split(sizes)
    boxes_all, scores_all, labels_all, probs_all = [], [], [], []
    for level, (probs, deltas, rows) in enumerate(levels):
        num_classes = probs.shape[-1]
        scores = probs.flatten()
        flat = torch.where(scores > model.score_thresh)[0]
        scores, idxs = scores[flat].topk(min(model.topk_candidates, int(flat.shape[0])))
        flat = flat[idxs]
        local, labels = flat // num_classes, flat % num_classes
        refs = anchors[level][rows[local]]
        if fcos:
            boxes = model.box_coder.decode(deltas[local], refs)
        else:
            boxes = model.box_coder.decode_single(deltas[local], refs)
        boxes_all.append(box_ops.clip_boxes_to_image(boxes, prefix.image_sizes[i]))
        scores_all.append(scores)
        labels_all.append(labels)
        probs_all.append(probs[local])
    boxes, scores = torch.cat(boxes_all), torch.cat(scores_all)
    labels, probs = torch.cat(labels_all), torch.cat(probs_all)
    keep = box_ops.batched_nms(boxes, scores, labels, model.nms_thresh)[: model.detections_per_img]
    return Raw(boxes[keep], scores[keep], labels[keep], probs[keep], "sigmoid")


def ssd_tail_passes(model: nn.Module, prefix: Prefix, sites: Sequence[str], generators, rates: Sequence[float],
                    dense: Sequence[DenseAccumulator] | None, channel_groups: int = 0) -> list[list[Raw]]:
    """SSD stochastic passes with the restricted tail: ``[P][B]`` :class:`Raw`.

    The dropout site is the head's input (``head``): each level's class and box convolutions
    read the same dropped pixels, as the hook gives them."""
    cls_convs = model.head.classification_head.module_list
    reg_convs = model.head.regression_head.module_list
    num_classes = model.head.classification_head.num_columns
    drop = "head" in sites
    p_count = len(rates)
    a_counts, sizes = ssd_anchor_counts(model, prefix.site)
    out: list[list[Raw]] = [[] for _ in range(p_count)]
    for i in range(len(prefix.rows)):
        gens = [generators[p][i] for p in range(p_count)]
        levels = []
        for level, anchors in enumerate(prefix.tail_anchors[i]):
            a_count = a_counts[level]
            logits, deltas = conv_at(prefix.site[level][i], anchors // a_count, anchors % a_count,
                                     [(cls_convs[level], num_classes), (reg_convs[level], 4)], gens, rates, drop,
                                     channel_groups=channel_groups)
            levels.append((F.softmax(logits.float(), -1), deltas.float(), anchors))
        rows = global_rows(levels, sizes)
        if dense is not None:
            add_restricted(prefix, dense[i], i, levels, rows, first=0)
        probs = torch.cat([pr for pr, _, _ in levels], 1)  # [P, n, K]
        deltas = torch.cat([d for _, d, _ in levels], 1)  # [P, n, 4]
        for p in range(p_count):
            out[p].append(ssd_detections(model, probs[p], deltas[p], prefix.references[i][rows],
                                         prefix.image_sizes[i]))
    return out


def ssd_anchor_counts(model: nn.Module, features: Sequence[Tensor]) -> tuple[list[int], list[int]]:
    """Per level of SSD's head input ``features``: default boxes per position, and in all."""
    head = model.head.classification_head
    a_counts = [int(conv.out_channels) // int(head.num_columns) for conv in head.module_list]
    return a_counts, [a * int(f.shape[-2]) * int(f.shape[-1]) for a, f in zip(a_counts, features)]
