"""The one-stage heads (RetinaNet, FCOS) in the stochastic passes: the dense candidates.

The deterministic pass ranks every anchor by its foreground probability and keeps the
``passes.dense_candidates`` best (:func:`choose_candidates`); each chunk of stochastic passes
adds those anchors' class probabilities to the image's accumulator (:func:`add_candidates`,
:mod:`det_al.inference.candidates`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from det_al.inference.candidates import DenseAccumulator
from det_al.inference.prefix import Prefix


def one_stage_probs(cls: list[Tensor], ctr: list[Tensor] | None, num_classes: int) -> Tensor:
    """``[N, R, C - 1]``: every anchor's per-class probabilities (the quantity the family scores
    detections with, background column left out), in torchvision's ``[H * W * A]`` anchor order."""
    levels = []
    for level, logits in enumerate(cls):
        n, _, h, w = logits.shape
        a_count = logits.shape[1] // num_classes
        x = logits.float().view(n, a_count, num_classes, h, w).permute(0, 3, 4, 1, 2)
        p = torch.sigmoid(x.reshape(n, h * w * a_count, num_classes)[..., 1:])
        if ctr is not None:
            c = ctr[level].float().view(n, a_count, h, w).permute(0, 2, 3, 1).reshape(n, h * w * a_count, 1)
            p = torch.sqrt(p * torch.sigmoid(c))
        levels.append(p)
    return torch.cat(levels, 1)


def choose_candidates(prefix: Prefix, dense: Sequence[DenseAccumulator], cls: list[Tensor],
                      ctr: list[Tensor] | None, num_classes: int) -> None:
    """The deterministic pass picks each image's candidates: its ``max_candidates`` anchors of
    highest foreground probability (all with ``max_candidates`` 0), in anchor order."""
    probs = one_stage_probs(cls, ctr, num_classes)  # [B, R, C - 1]
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
