"""The one-stage heads (RetinaNet, FCOS) in the stochastic passes: the dense candidates.

The deterministic pass ranks every anchor by its foreground probability and keeps the
``passes.dense_candidates`` best (:func:`choose_candidates`); each chunk of stochastic passes
adds those anchors' class probabilities to the image's accumulator (:func:`add_candidates`,
:mod:`det_al.inference.candidates`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import boxes as box_ops

from det_al.inference.candidates import DenseAccumulator
from det_al.inference.postprocess import Raw
from det_al.inference.prefix import Prefix


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


def choose_candidates(dense: Sequence[DenseAccumulator], probs: Tensor) -> None:
    """The deterministic pass picks each image's candidates: its ``max_candidates`` anchors of
    highest foreground probability (all with ``max_candidates`` 0), in anchor order.
    ``probs``: :func:`one_stage_probs` ``[B, R, C - 1]`` of the deterministic pass."""
    for i, acc in enumerate(dense):
        foreground = probs[i].amax(-1) if probs.shape[-1] else probs[i].sum(-1)
        r = int(foreground.shape[0])
        m = r if acc.max_candidates <= 0 else min(acc.max_candidates, r)
        acc.index = foreground.topk(m).indices.sort().values


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
#
# ``passes.tail: candidates``: the stochastic passes evaluate the head's last convolutions only
# for the deterministic pass's candidate anchors (its ``passes.dense_candidates`` best by
# foreground probability, plus every anchor above the score threshold), as matrix products over
# the gathered 3x3 neighbourhoods of their positions (one per anchor shape and pass batch),
# instead of a convolution over every position and anchor. A pass can then detect only at those
# anchors: what that changes against ``exact`` is measured by ``benchmarks/bench_passes.py``.
# Dropout is drawn on the input pixels the neighbourhoods read (element-wise, as the hook does,
# so neighbouring anchors share their inputs' masks), from the pass's own generator, but in a
# different order than a whole-map mask: the passes differ from ``exact`` ones, not their
# distribution.

_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # the order of a 3x3 kernel


def restrictable(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain 3x3, stride 1, padding 1 convolution (what :func:`conv_at` computes)."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1)


def neighbourhoods(positions: Tensor, height: int, width: int) -> Tensor:
    """``[n, 9]`` flat indices (``y * W + x``) of each position's 3x3 neighbourhood in kernel
    order; a neighbour outside the map is ``H * W`` (a zero column appended to the map).

    >>> neighbourhoods(torch.tensor([0, 4]), 3, 3).tolist()
    [[9, 9, 9, 9, 0, 1, 9, 3, 4], [0, 1, 2, 3, 4, 5, 6, 7, 8]]
    """
    y, x = positions // width, positions % width
    dy = torch.tensor([o[0] for o in _OFFSETS], device=positions.device)
    dx = torch.tensor([o[1] for o in _OFFSETS], device=positions.device)
    yy, xx = y[:, None] + dy, x[:, None] + dx
    inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
    return torch.where(inside, yy * width + xx, torch.full_like(yy, height * width))


def conv_at(x: Tensor, positions: Tensor, groups: Tensor, convs: Sequence[tuple[nn.Conv2d, int]],
            generators: Sequence["torch.Generator | None"], rates: Sequence[float], drop: bool) -> list[Tensor]:
    """3x3 convolutions of ``x`` ``[C, H, W]`` at ``m`` rows for P passes: ``[P, m, width]`` per conv.

    Row ``j`` is output channels ``groups[j] * width .. (groups[j] + 1) * width`` of ``conv`` at
    flat position ``positions[j]`` (``y * W + x``): one anchor's outputs when a head lays its
    channels out anchor by anchor, as torchvision's do. With ``drop``, pass ``p`` first applies
    inverted dropout at rate ``rates[p]`` to the input pixels the rows read (keep-mask
    ``rand([U, C]) >= rate`` from ``generators[p]``, U the distinct pixels in sorted order, the
    zero padding last); all ``convs`` read the same dropped input.
    """
    c, h, w = x.shape
    order = torch.argsort(groups * (h * w + 1) + positions)  # group-major: one matmul per group
    index = neighbourhoods(positions[order], h, w)  # [m, 9]
    needed, inverse = torch.unique(index, return_inverse=True)
    flat = torch.cat([x.reshape(c, h * w), x.new_zeros((c, 1))], 1)[:, needed].t().contiguous()  # [U, C]
    p_count = len(rates)
    if drop and any(r > 0.0 for r in rates):
        values = flat.new_empty((p_count, *flat.shape))  # [P, U, C]
        for g, r, v in zip(generators, rates, values):
            if r == 0.0:
                v.copy_(flat)
            else:  # keep-mask rand >= r, kept values scaled by 1 / (1 - r), without temporaries
                torch.rand(flat.shape, generator=g, device=flat.device, out=v)
                v.ge_(r).mul_(flat).mul_(1.0 / (1.0 - r))
    else:
        values = flat[None]
    patches = values[:, inverse].reshape(values.shape[0], -1, 9 * c)  # [P|1, m, 9C], kernel-major
    counts = torch.bincount(groups, minlength=1).tolist()
    out = []
    for conv, width in convs:
        weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, 9 * c).to(patches.dtype)
        y = patches.new_empty((patches.shape[0], patches.shape[1], width))
        start = 0
        for g, n in enumerate(counts):
            if n:
                rows_g = slice(g * width, (g + 1) * width)
                y[:, start:start + n] = torch.matmul(patches[:, start:start + n], weight[rows_g].t())
                if conv.bias is not None:
                    y[:, start:start + n] += conv.bias[rows_g].to(y.dtype)
            start += n
        result = torch.empty_like(y)
        result[:, order] = y
        out.append(result.expand(p_count, -1, -1))
    return out


def choose_anchors(prefix: Prefix, probs: Tensor, sizes: Sequence[int], score_thresh: float,
                   max_candidates: int, dense: Sequence[DenseAccumulator] | None = None) -> None:
    """The deterministic pass picks, per image and level, the anchors the restricted tail
    evaluates (``prefix.tail_anchors``, sorted indices within the level): its ``max_candidates``
    anchors of highest foreground probability (the dense accumulators' choice when given) and
    every anchor with a class probability above ``score_thresh`` (every anchor when
    ``max_candidates`` is 0). ``probs``: :func:`one_stage_probs` with ``first=0``, ``[B, R, C]``;
    ``sizes``: the anchors of each level."""
    chosen_anchors: list[list[Tensor]] = []
    for i in range(probs.shape[0]):
        chosen = (probs[i] > score_thresh).any(1)
        if max_candidates <= 0:
            chosen[:] = True
        elif dense is not None and dense[i].index is not None:
            chosen[dense[i].index] = True
        else:
            foreground = probs[i, :, 1:].amax(1) if probs.shape[-1] > 1 else probs[i, :, 0]
            chosen[foreground.topk(min(max_candidates, int(foreground.shape[0]))).indices] = True
        chosen_anchors.append([torch.where(part)[0] for part in chosen.split(list(sizes))])
    prefix.tail_anchors = chosen_anchors


def tail_passes(model: nn.Module, prefix: Prefix, sites: Sequence[str], generators, rates: Sequence[float],
                dense: Sequence[DenseAccumulator] | None) -> list[list[Raw]]:
    """RetinaNet / FCOS stochastic passes with the restricted tail: ``[P][B]`` :class:`Raw`."""
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
                             drop["classification_head.cls_logits"])[0].float()
            deltas = conv_at(*reg_site, [(reg_head.bbox_reg, 4)], gens, rates,
                             drop["regression_head.bbox_reg"])[0].float()
            if fcos:
                deltas = F.relu(deltas)
                centerness = conv_at(*reg_site, [(reg_head.bbox_ctrness, 1)], gens, rates,
                                     drop["regression_head.bbox_ctrness"])[0].float()
                probs = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(centerness))
            else:
                probs = torch.sigmoid(logits)
            levels.append((probs, deltas, anchors))
        if dense is not None:
            _add_restricted(prefix, dense[i], i, levels, sizes)
        for p in range(p_count):
            level_pass = [(pr[p], d[p], a) for pr, d, a in levels]
            out[p].append(_tail_postprocess(model, prefix, i, level_pass, sizes, fcos))
    return out


def _add_restricted(prefix: Prefix, acc: DenseAccumulator, i: int,
                    levels: list[tuple[Tensor, Tensor, Tensor]], sizes: list[int]) -> None:
    """The accumulator's candidates' probabilities ``[m, P, K - 1]`` from the restricted outputs."""
    offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0).tolist()
    rows = torch.cat([a + o for (_, _, a), o in zip(levels, offsets)])  # global anchor ids, sorted
    probs = torch.cat([pr for pr, _, _ in levels], 1)  # [P, n, K]
    index = acc.index if acc.index is not None else rows
    where = torch.searchsorted(rows, index)
    acc.add(probs[:, where, 1:].transpose(0, 1), prefix.references[i][index])


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
