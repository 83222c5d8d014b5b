"""The Mask R-CNN mask branch of the stochastic passes.

Every pass's masks stay in the box frame (``[N, 1, M, M]`` probabilities, ``M = 28``): only the
deterministic pass is pasted into the image (:func:`det_al.inference.suffix.to_original`); the
scorer pastes pass masks into a small window where it compares them
(:mod:`det_al.inference.mask_paste`).

``passes.masks``:

- ``exact`` (:func:`exact_masks`): ``mask_roi_pool`` / ``mask_head`` / ``mask_predictor`` on
  each pass's own boxes, all passes of the batch in one call: what T whole-model passes give.
- ``shared`` (:func:`shared_masks`): the mask branch up to the final 1x1 ``mask_fcn_logits``
  runs once on the deterministic boxes; each pass detection within box IoU ``SHARE_IOU`` of a
  deterministic one reuses its features, the others get their own (one batched call), and each
  pass applies ``mask_fcn_logits`` with channel dropout on its input.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import boxes as box_ops

from det_al.inference.dropout import Chunk, MCDropout
from det_al.inference.postprocess import Raw
from det_al.inference.prefix import Prefix, SharedMasks

# Passes closer than this (box IoU) to a deterministic detection reuse its mask features.
SHARE_IOU = 0.5

Generators = Sequence[Sequence["torch.Generator | None"]]


def exact_masks(model: nn.Module, prefix: Prefix, control: MCDropout, generators: Generators,
                rates: Sequence[float], out: list[list[Raw]]) -> None:
    """Mask probabilities ``[N, 1, M, M]`` of each pass's own boxes (all passes of an image batched)."""
    rh = model.roi_heads
    p_count, b_count = len(out), len(prefix.rows)
    per_image = [torch.cat([out[p][i].boxes for p in range(p_count)]) for i in range(b_count)]
    if sum(int(b.shape[0]) for b in per_image) == 0:
        for row in out:
            for raw in row:
                raw.masks = raw.boxes.new_zeros((0, 1, 1, 1))
        return
    # mask_roi_pool orders RoIs image by image: image-major, then pass.
    chunks = [Chunk(generators[p][i], float(rates[p]), int(out[p][i].boxes.shape[0]))
              for i in range(b_count) for p in range(p_count)]
    features = rh.mask_roi_pool(prefix.features, per_image, prefix.image_sizes)
    features = rh.mask_head(features)
    with control.layout(chunks):
        mask_logits = rh.mask_predictor(features)
    labels = torch.cat([out[p][i].labels for i in range(b_count) for p in range(p_count)])
    logits = mask_logits[torch.arange(mask_logits.shape[0], device=mask_logits.device), labels]
    pieces = logits.float().sigmoid()[:, None].split([c.rows for c in chunks])
    k = 0
    for i in range(b_count):
        for p in range(p_count):
            out[p][i].masks = pieces[k]
            k += 1


def mask_features(model: nn.Module, prefix: Prefix, boxes: list[Tensor]) -> list[Tensor]:
    """``[N_i, D, M, M]`` per image: the mask branch up to ``mask_fcn_logits`` on ``boxes``."""
    rh = model.roi_heads
    counts = [int(b.shape[0]) for b in boxes]
    if sum(counts) == 0:
        return [b.new_zeros((0, 0, 0, 0)) for b in boxes]
    x = rh.mask_head(rh.mask_roi_pool(prefix.features, boxes, prefix.image_sizes))
    x = rh.mask_predictor.relu(rh.mask_predictor.conv5_mask(x))
    return list(x.split(counts))


def check_shared_predictor(model: nn.Module) -> None:
    predictor = model.roi_heads.mask_predictor
    conv = getattr(predictor, "mask_fcn_logits", None)
    if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (1, 1):
        raise ValueError("passes.masks: shared needs torchvision's MaskRCNNPredictor (a 1x1 mask_fcn_logits)")


def store_shared(model: nn.Module, prefix: Prefix, control: MCDropout, deterministic: list[Raw]) -> None:
    """Keep the deterministic detections' boxes and mask features in ``prefix.shared_masks``."""
    with control.layout([Chunk(None, 0.0)]):
        boxes = [raw.boxes for raw in deterministic]
        prefix.shared_masks = SharedMasks(boxes, mask_features(model, prefix, boxes))


def _partners(model: nn.Module, prefix: Prefix, control: MCDropout,
              out: list[list[Raw]]) -> tuple[list[list[tuple[Tensor, Tensor]]], list[Tensor]]:
    """For each pass detection, the deterministic detection whose features it reuses (IoU >=
    ``SHARE_IOU``, else -1) and its row among the features computed for the others ("lonely")."""
    cache = prefix.shared_masks
    b_count = len(prefix.rows)
    sources: list[list[tuple[Tensor, Tensor]]] = []  # [P][B] (partner index or -1, own row or -1)
    extra: list[list[Tensor]] = [[] for _ in range(b_count)]
    n_extra = [0] * b_count
    for row_out in out:
        row = []
        for i, raw in enumerate(row_out):
            boxes = raw.boxes
            partner = torch.full((boxes.shape[0],), -1, dtype=torch.long, device=boxes.device)
            if cache.boxes[i].shape[0] and boxes.shape[0]:
                best, index = box_ops.box_iou(boxes, cache.boxes[i]).max(dim=1)
                partner = torch.where(best >= SHARE_IOU, index, partner)
            lonely = torch.where(partner < 0)[0]
            own = torch.full_like(partner, -1)
            own[lonely] = torch.arange(n_extra[i], n_extra[i] + lonely.numel(), device=boxes.device)
            n_extra[i] += int(lonely.numel())
            extra[i].append(boxes[lonely])
            row.append((partner, own))
        sources.append(row)
    with control.layout([Chunk(None, 0.0)]):
        extra_features = mask_features(model, prefix, [torch.cat(e) if e else cache.boxes[i][:0]
                                                       for i, e in enumerate(extra)])
    return sources, extra_features


def shared_masks(model: nn.Module, prefix: Prefix, control: MCDropout, generators: Generators,
                 rates: Sequence[float], out: list[list[Raw]]) -> None:
    """Masks of P passes from the deterministic detections' mask features (``passes.masks: shared``).

    ``prefix.shared_masks`` must hold the deterministic detections (:func:`store_shared`). A
    pass detection takes the features of the deterministic box it overlaps most when that IoU
    is >= ``SHARE_IOU``, else its own. Each pass applies ``mask_fcn_logits`` for the
    detection's label with *channel* dropout on its input when a dropout site lies in the mask
    branch (keep-mask ``rand([n, D]) >= rate`` from the pass's generator, kept channels scaled
    by ``1 / (1 - rate)``: D draws per detection instead of ``D * M * M``).

    What this leaves out, compared with ``exact``: the mask head's response to each pass's
    slightly different RoI, and element-wise dropout at the predictor's input. Box, label and
    score of every detection are the same as ``exact``.
    """
    check_shared_predictor(model)
    predictor = model.roi_heads.mask_predictor
    masked = any(s.startswith("roi_heads.mask_") for s in control.sites)
    sources, extra_features = _partners(model, prefix, control, out)
    weight = predictor.mask_fcn_logits.weight[:, :, 0, 0]  # [C, D]
    bias = predictor.mask_fcn_logits.bias
    for p, row_out in enumerate(out):
        for i, raw in enumerate(row_out):
            partner, own = sources[p][i]
            f = prefix.shared_masks.features[i][partner.clamp(min=0)]  # [n, D, M, M]
            lonely = own >= 0
            if bool(lonely.any()):
                f[lonely] = extra_features[i][own[lonely]]
            w = weight[raw.labels]  # [n, D]
            g, rate = generators[p][i], float(rates[p])
            if masked and rate > 0.0 and w.shape[0]:
                keep = torch.rand(w.shape, generator=g, device=w.device) >= rate
                w = w * keep.to(w.dtype) * (1.0 / (1.0 - rate))
            logits = torch.einsum("nd,ndhw->nhw", w.to(f.dtype), f) + bias[raw.labels].to(f.dtype)[:, None, None]
            raw.masks = logits.float().sigmoid()[:, None]
