"""The Mask R-CNN mask branch of the stochastic passes.

Every pass's masks stay in the box frame (``[N, 1, M, M]`` probabilities, ``M = 28``): only the
deterministic pass is pasted into the image (:func:`det_al.inference.suffix.to_original`); the
scorer pastes pass masks into a small window where it compares them
(:mod:`det_al.inference.mask_paste`).

``passes.masks``:

- ``exact`` (:func:`exact_masks`): ``mask_roi_pool`` / ``mask_head`` / ``mask_predictor`` on
  each pass's own boxes, all passes of the batch in one call: what T whole-model passes give.
- ``shared`` (:func:`shared_masks`): the mask branch up to the final 1x1 ``mask_fcn_logits``
  runs once on the deterministic boxes; each pass detection reuses the features of the
  deterministic detection it overlaps most and applies ``mask_fcn_logits`` with channel dropout
  on its input; one that overlaps none gets an empty mask, which the scorer never reads.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import boxes as box_ops

from det_al.inference.dropout import Chunk, MCDropout
from det_al.inference.postprocess import Raw
from det_al.inference.prefix import Prefix, SharedMasks

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


def _partners(prefix: Prefix, out: list[list[Raw]]) -> list[Tensor]:
    """Whose mask features each pass detection uses: ``[B]`` tensors over the image's pass
    detections (pass-major), rows of ``prefix.shared_masks.features[i]``: the deterministic
    detection it overlaps most (box IoU), ``-1`` for one that overlaps none."""
    sources = []
    for i in range(len(prefix.rows)):
        known = prefix.shared_masks.boxes[i]
        boxes = torch.cat([row_out[i].boxes for row_out in out])
        source = torch.full((boxes.shape[0],), -1, dtype=torch.long, device=boxes.device)
        if known.shape[0] and boxes.shape[0]:
            best, index = box_ops.box_iou(boxes, known).max(dim=1)
            source = torch.where(best > 0, index, source)
        sources.append(source)
    return sources


def shared_masks(model: nn.Module, prefix: Prefix, control: MCDropout, generators: Generators,
                 rates: Sequence[float], out: list[list[Raw]]) -> None:
    """Masks of P passes from the deterministic detections' mask features (``passes.masks: shared``).

    ``prefix.shared_masks`` must hold the deterministic detections (:func:`store_shared`). A
    pass detection takes the features of the deterministic detection it overlaps most
    (:func:`_partners`) and applies ``mask_fcn_logits`` for its own label with *channel* dropout
    on its input when a dropout site lies in the mask branch (keep-mask ``rand([n, D]) >= rate``
    from the pass's generator, kept channels scaled by ``1 / (1 - rate)``: D draws per detection
    instead of ``D * M * M``), as one matrix product per feature source. A pass detection that
    overlaps no deterministic detection gets an empty mask (probability 0): it cannot join an
    object the deterministic pass reports, the only ones whose mask disagreement is measured
    (:func:`det_al.scoring.uncertainty.mask_disagreement`).

    What this leaves out, compared with ``exact``: the mask head's response to each pass's
    slightly different RoI, and element-wise dropout at the predictor's input. Box, label and
    score of every detection are the same as ``exact``.
    """
    check_shared_predictor(model)
    predictor = model.roi_heads.mask_predictor
    masked = any(s.startswith("roi_heads.mask_") for s in control.sites)
    weight = predictor.mask_fcn_logits.weight[:, :, 0, 0]  # [C, D]
    bias = predictor.mask_fcn_logits.bias
    for i, source in enumerate(_partners(prefix, out)):
        weights, labels = [], []
        for p, row_out in enumerate(out):
            raw = row_out[i]
            w = weight[raw.labels]  # [n, D]
            g, rate = generators[p][i], float(rates[p])
            if masked and rate > 0.0 and w.shape[0]:
                keep = torch.rand(w.shape, generator=g, device=w.device) >= rate
                w = w * keep.to(w.dtype) * (1.0 / (1.0 - rate))
            weights.append(w)
            labels.append(raw.labels)
        features = prefix.shared_masks.features[i]
        w_all, label_all = torch.cat(weights), torch.cat(labels)
        if w_all.shape[0] == 0:
            masks = w_all.new_zeros((0, 1, 1, 1))
        else:
            m = features.shape[-1] if features.numel() else _mask_size(model)
            logits = w_all.new_full((w_all.shape[0], m * m), float("-inf"))  # no partner: an empty mask
            flat = features.reshape(features.shape[0], features.shape[1], m * m) if features.numel() else None
            for j in torch.unique(source[source >= 0]).tolist():  # one matrix product per feature source
                rows = torch.where(source == j)[0]
                logits[rows] = (w_all[rows].to(flat.dtype) @ flat[j]) + bias[label_all[rows]].to(flat.dtype)[:, None]
            masks = logits.float().sigmoid().view(-1, 1, m, m)
        for raw, piece in zip((row_out[i] for row_out in out), masks.split([len(w) for w in weights])):
            raw.masks = piece


def _mask_size(model: nn.Module) -> int:
    """The side of the mask head's output (twice ``mask_roi_pool``'s, for torchvision's predictor)."""
    size = model.roi_heads.mask_roi_pool.output_size
    return 2 * int(size[0] if isinstance(size, (tuple, list)) else size)
