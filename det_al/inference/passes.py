"""Stochastic passes through a torchvision detector: the only module that calls the model.

Each supported family (see :func:`det_al.models.build.model_family`) is re-implemented in two halves
from the model's own submodules:

- ``prefix``: everything upstream of the first dropout site, which every pass shares:
  ``transform`` + ``backbone`` + ``rpn`` + ``box_roi_pool`` + ``box_head`` (R-CNN);
  ``backbone`` + the classification/regression head towers (RetinaNet, FCOS);
  ``backbone`` (SSD, whose site is the head's input).
- ``suffix``: from the site on (``box_predictor``; ``cls_logits``/``bbox_reg``/``bbox_ctrness``;
  the whole SSD head), run for P passes in one batched call, pass-major (rows of pass ``p``,
  image ``i`` at block ``p * B + i``), then postprocessed pass by pass exactly as torchvision's
  ``postprocess_detections`` (:mod:`det_al.inference.postprocess`) + ``transform.postprocess`` do, except
  that every detection keeps the full class-probability vector of the proposal/anchor it came
  from:

  ========== =========================================================================
  rcnn, ssd  ``softmax`` over all classes incl. background (index 0); score = probs[label]
  retinanet  per-class ``sigmoid(cls_logit)``; score = probs[label]
  fcos       per-class ``sqrt(sigmoid(cls_logit) * sigmoid(centerness))``, the quantity
             torchvision scores (and thresholds) FCOS detections with; score = probs[label]
  ========== =========================================================================

  Mask R-CNN runs ``mask_roi_pool`` / ``mask_head`` / ``mask_predictor`` on each pass's own
  boxes (all passes of an image in one batched call) and pastes the mask probabilities into
  the original image with torchvision's ``paste_masks_in_image``; ``passes.masks: shared``
  runs that branch once, on the deterministic boxes (:func:`_shared_masks`).

The fast path computes the prefix once per image batch and TTA view; the plain path
(``fast=False``) runs prefix + suffix once per pass and image, hooks and generators identical,
so both give the same passes (the equivalence the tests check). Dropout masks come from one
generator per (image, view, pass) seeded from ``seeds[i]`` (:func:`pass_seed`), so an image's
passes do not depend on the batch it is in. (Its *features* may: torchvision pads a batch to
its largest image, which moves border activations slightly, and CPU kernels sum in a
batch-size dependent order; so shards and resumed runs score the very batches a single run
does, see :func:`det_al.run.shards.shard_positions`.)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops

from det_al.config import PassesConfig
from det_al.inference.candidates import Candidates, DenseAccumulator
from det_al.inference.detections import Detections
from det_al.inference.dropout import Chunk, MCDropout, default_sites, mc_dropout
from det_al.models.build import model_family
from det_al.inference.prefix import Prefix, SharedMasks
from det_al.inference.postprocess import Raw, dense_postprocess, rcnn_postprocess, ssd_postprocess
from det_al.inference.tta import View, apply_view, parse_views, unapply_view

logger = logging.getLogger(__name__)

# Modules run in the suffix of each family: a dropout site inside one of them keeps the fast
# path valid; a site anywhere else (a user's choice upstream) makes run_passes use the plain path.
SUFFIX_MODULES: dict[str, tuple[str, ...]] = {
    "rcnn": (
        "roi_heads.box_predictor",
        "roi_heads.mask_roi_pool",
        "roi_heads.mask_head",
        "roi_heads.mask_predictor",
    ),
    "retinanet": ("head.classification_head.cls_logits", "head.regression_head.bbox_reg"),
    "fcos": (
        "head.classification_head.cls_logits",
        "head.regression_head.bbox_reg",
        "head.regression_head.bbox_ctrness",
    ),
    "ssd": ("head",),
}


@dataclass
class ImagePasses:
    """All passes over one image, in original-image coordinates.

    Attributes:
        deterministic: the pass without dropout or TTA: the pseudo-labels.
        passes: ``V * T`` stochastic passes, view-major (the T passes of the identity view first).
        views: the view name of each stochastic pass, ``len == V * T``.
        embedding: ``[D]`` global average of the backbone's coarsest feature map over the
            image's own area (padding excluded), from the deterministic pass.
        candidates: the pre-threshold candidates over the identity view's T passes
            (:mod:`det_al.scoring.dense`), boxes in original-image pixels; ``None`` when they differ
            between passes (a dropout site upstream of them).
    """

    deterministic: Detections
    passes: list[Detections]
    views: list[str]
    embedding: Tensor
    candidates: Candidates | None = None


def pass_seed(seed: int, view: int, index: int) -> int:
    """The generator seed of pass ``index`` of view ``view`` of an image seeded ``seed``."""
    digest = hashlib.blake2b(f"{seed}/{view}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def in_suffix(site: str, family: str) -> bool:
    """Whether module path ``site`` is run inside the family's suffix."""
    return any(site == m or site.startswith(m + ".") for m in SUFFIX_MODULES[family])


# --------------------------------------------------------------------------- prefixes


def compute_prefix(model: nn.Module, images: Sequence[Tensor], family: str) -> Prefix:
    """Run the deterministic upstream part for ``images`` (float ``[3, H, W]`` in [0, 1])."""
    original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    image_list, _ = model.transform(list(images))
    features = model.backbone(image_list.tensors)
    if isinstance(features, Tensor):
        features = OrderedDict([("0", features)])
    padded = (int(image_list.tensors.shape[-2]), int(image_list.tensors.shape[-1]))
    sizes = [(int(h), int(w)) for h, w in image_list.image_sizes]
    levels = list(features.values())
    if family == "rcnn":
        proposals, objectness = _rpn(model.rpn, image_list, features)
        box_features = model.roi_heads.box_roi_pool(features, proposals, image_list.image_sizes)
        box_features = model.roi_heads.box_head(box_features)
        return Prefix(family, sizes, original_sizes, padded, features, box_features,
                      [int(p.shape[0]) for p in proposals], proposals, objectness=objectness)
    anchors = model.anchor_generator(image_list, levels)
    if family in ("retinanet", "fcos"):
        cls_tower = [model.head.classification_head.conv(f) for f in levels]
        reg_tower = [model.head.regression_head.conv(f) for f in levels]
        return Prefix(family, sizes, original_sizes, padded, features, (cls_tower, reg_tower),
                      [1] * len(images), anchors)
    if family == "ssd":
        return Prefix(family, sizes, original_sizes, padded, features, levels, [1] * len(images), anchors)
    raise ValueError(f"unknown model family {family!r}")


def _rpn(rpn: nn.Module, image_list, features: "OrderedDict[str, Tensor]") -> tuple[list[Tensor], list[Tensor]]:
    """``RegionProposalNetwork.forward`` at inference, keeping what it drops: each proposal's
    objectness probability (``filter_proposals``' scores). Returns ``(proposals [R_i, 4],
    objectness [R_i])`` per image."""
    levels = list(features.values())
    objectness, deltas = rpn.head(levels)
    anchors = rpn.anchor_generator(image_list, levels)
    per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
    boxes, scores = rpn.filter_proposals(proposals, objectness, image_list.image_sizes, per_level)
    return boxes, scores


def embeddings(prefix: Prefix) -> Tensor:
    """``[B, D]``: mean of the coarsest feature map over each image's own (unpadded) area."""
    coarsest = list(prefix.features.values())[-1]
    out = []
    ph, pw = prefix.padded_size
    h_map, w_map = coarsest.shape[-2:]
    for i, (h, w) in enumerate(prefix.image_sizes):
        rows = max(1, min(h_map, -(-h * h_map // ph)))
        cols = max(1, min(w_map, -(-w * w_map // pw)))
        out.append(coarsest[i, :, :rows, :cols].float().mean(dim=(-2, -1)))
    return torch.stack(out)


# --------------------------------------------------------------------------- suffixes


def _pass_chunks(generators: list[list[torch.Generator | None]], rates: Sequence[float],
                 rows: Sequence[int]) -> list[Chunk]:
    """Pass-major row layout: pass p, image i -> ``Chunk(generators[p][i], rates[p], rows[i])``."""
    return [Chunk(g, float(r), n) for gens, r in zip(generators, rates) for g, n in zip(gens, rows)]


def run_suffix(model: nn.Module, prefix: Prefix, control: MCDropout,
               generators: list[list[torch.Generator | None]], rates: Sequence[float],
               masks: str = "exact", dense: Sequence[DenseAccumulator] | None = None,
               choose: bool = False) -> list[list[Detections]]:
    """The stochastic part for P passes in one batched call.

    Args:
        generators: ``[P][B]`` one generator per pass and image (``None`` where the rate is 0).
        rates: ``[P]`` the dropout rate of each pass.
        masks: Mask R-CNN: ``exact`` (the mask branch on each pass's boxes) or ``shared``
            (:func:`_shared_masks`; a call with all rates 0 fills ``prefix.shared_masks``).
        dense: ``[B]`` accumulators that receive every candidate's class probabilities of the
            P passes before any threshold (:mod:`det_al.scoring.dense`), or ``None``.
        choose: the call is the deterministic pass: RetinaNet/FCOS accumulators keep the indices
            of its ``max_candidates`` anchors of highest foreground probability (the candidates
            of the stochastic passes); nothing is accumulated.

    Returns ``[P][B]`` detections in the coordinates of the images given to the prefix.
    """
    family = prefix.family
    p_count = len(rates)
    chunks = _pass_chunks(generators, rates, prefix.rows)
    if family == "rcnn":
        x = prefix.site.repeat(p_count, 1) if p_count > 1 else prefix.site
        with control.layout(chunks):
            class_logits, box_regression = model.roi_heads.box_predictor(x)
        probs = F.softmax(class_logits.float(), -1)
        if dense is not None and not choose:
            pieces = probs.split(prefix.rows * p_count)
            b_count = len(prefix.rows)
            for i, acc in enumerate(dense):
                acc.add(torch.stack([pieces[p * b_count + i] for p in range(p_count)], 1),
                        prefix.references[i], prefix.objectness[i] if prefix.objectness else None)
        out = rcnn_postprocess(model, prefix, class_logits.float(), box_regression.float(), p_count, probs)
        if model.roi_heads.has_mask():
            if masks == "shared":
                _shared_masks(model, prefix, control, generators, rates, out)
            else:
                _rcnn_masks(model, prefix, control, generators, rates, out)
        return _to_original(prefix, out)
    if family in ("retinanet", "fcos"):
        cls_tower, reg_tower = prefix.site
        cls_head, reg_head = model.head.classification_head, model.head.regression_head
        with control.layout(chunks):
            cls = [cls_head.cls_logits(_tile(t, p_count)) for t in cls_tower]
            reg, ctr = [], []
            for t in reg_tower:
                t = _tile(t, p_count)
                if family == "fcos":
                    reg.append(F.relu(reg_head.bbox_reg(t)))
                    ctr.append(reg_head.bbox_ctrness(t))
                else:
                    reg.append(reg_head.bbox_reg(t))
        if dense is not None:
            if choose:
                _choose_one_stage(prefix, dense, cls, ctr or None, cls_head.num_classes)
            else:
                _add_one_stage(prefix, dense, cls, ctr or None, cls_head.num_classes, p_count)
        out = dense_postprocess(model, prefix, cls, reg, ctr or None, p_count)
        return _to_original(prefix, out)
    if family == "ssd":
        with control.layout(chunks):
            head_outputs = model.head([_tile(f, p_count) for f in prefix.site])
        if dense is not None and not choose:
            probs = F.softmax(head_outputs["cls_logits"].float(), dim=-1)  # [P * B, R, C]
            b_count = len(prefix.rows)
            for i, acc in enumerate(dense):
                acc.add(probs[i::b_count].transpose(0, 1), prefix.references[i])
        out = ssd_postprocess(model, prefix, head_outputs, p_count)
        return _to_original(prefix, out)
    raise ValueError(f"unknown model family {family!r}")


def _one_stage_probs(cls: list[Tensor], ctr: list[Tensor] | None, num_classes: int) -> Tensor:
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


def _choose_one_stage(prefix: Prefix, dense: Sequence[DenseAccumulator], cls: list[Tensor],
                      ctr: list[Tensor] | None, num_classes: int) -> None:
    """The deterministic pass picks each image's candidates: its ``max_candidates`` anchors of
    highest foreground probability (all with ``max_candidates`` 0), in anchor order."""
    probs = _one_stage_probs(cls, ctr, num_classes)  # [B, R, C - 1]
    for i, acc in enumerate(dense):
        foreground = probs[i].amax(-1) if probs.shape[-1] else probs[i].sum(-1)
        r = int(foreground.shape[0])
        m = r if acc.max_candidates <= 0 else min(acc.max_candidates, r)
        acc.index = foreground.topk(m).indices.sort().values


def _add_one_stage(prefix: Prefix, dense: Sequence[DenseAccumulator], cls: list[Tensor],
                   ctr: list[Tensor] | None, num_classes: int, p_count: int) -> None:
    """The chosen candidates' per-class probabilities of P passes (:func:`_one_stage_probs`),
    gathered from the heads' native ``[P * B, A * K, H, W]`` layout, to ``dense``."""
    b_count = len(prefix.rows)
    for i, acc in enumerate(dense):
        if acc.index is None:  # no deterministic choice: every anchor
            probs = _one_stage_probs([x[i::b_count] for x in cls], [c[i::b_count] for c in ctr] if ctr else None,
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


def _tile(x: Tensor, p_count: int) -> Tensor:
    return x.repeat(p_count, *([1] * (x.ndim - 1))) if p_count > 1 else x


def _rcnn_masks(model: nn.Module, prefix: Prefix, control: MCDropout,
                generators: list[list[torch.Generator | None]], rates: Sequence[float],
                out: list[list[Raw]]) -> None:
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
    probs = mask_logits.float().sigmoid()
    labels = torch.cat([out[p][i].labels for i in range(b_count) for p in range(p_count)])
    probs = probs[torch.arange(probs.shape[0], device=probs.device), labels][:, None]
    pieces = probs.split([c.rows for c in chunks])
    k = 0
    for i in range(b_count):
        for p in range(p_count):
            out[p][i].masks = pieces[k]
            k += 1


# Passes closer than this (box IoU) to a deterministic detection reuse its mask features.
SHARE_IOU = 0.5


def _mask_features(model: nn.Module, prefix: Prefix, boxes: list[Tensor]) -> list[Tensor]:
    """``[N_i, D, M, M]`` per image: the mask branch up to ``mask_fcn_logits`` on ``boxes``."""
    rh = model.roi_heads
    counts = [int(b.shape[0]) for b in boxes]
    if sum(counts) == 0:
        return [b.new_zeros((0, 0, 0, 0)) for b in boxes]
    x = rh.mask_head(rh.mask_roi_pool(prefix.features, boxes, prefix.image_sizes))
    x = rh.mask_predictor.relu(rh.mask_predictor.conv5_mask(x))
    return list(x.split(counts))


def _shared_masks(model: nn.Module, prefix: Prefix, control: MCDropout,
                  generators: list[list[torch.Generator | None]], rates: Sequence[float],
                  out: list[list[Raw]]) -> None:
    """Masks of P passes from the deterministic detections' mask features (``passes.masks: shared``).

    The mask branch up to the final 1x1 ``mask_fcn_logits`` runs once per image, on the
    deterministic boxes (a call with all rates 0 is the deterministic pass: it stores them in
    ``prefix.shared_masks``). A pass detection whose box overlaps a deterministic box by IoU
    >= ``SHARE_IOU`` takes the features of the one it overlaps most; the others (rare on a
    trained model, common on an untrained one) get their own, in one batched call. Each pass
    then applies ``mask_fcn_logits`` for the detection's own label with *channel* dropout on its
    input when a dropout site lies in the mask branch (keep-mask ``rand([n, D]) >= rate`` from
    the pass's generator, kept channels scaled by ``1 / (1 - rate)``: D draws per detection
    instead of ``D * M * M``), and the probabilities are pasted into the pass's own box.

    What this leaves out, compared with ``exact``: the mask head's response to each pass's
    slightly different RoI, and element-wise dropout at the predictor's input. Box, label and
    score of every detection are the same as ``exact``.
    """
    rh = model.roi_heads
    predictor = rh.mask_predictor
    if not isinstance(getattr(predictor, "mask_fcn_logits", None), nn.Conv2d) or \
            predictor.mask_fcn_logits.kernel_size != (1, 1):
        raise ValueError("passes.masks: shared needs torchvision's MaskRCNNPredictor (a 1x1 mask_fcn_logits)")
    masked = any(s.startswith("roi_heads.mask_") for s in control.sites)
    p_count, b_count = len(out), len(prefix.rows)
    with control.layout([Chunk(None, 0.0)]):
        if all(r == 0.0 for r in rates) and prefix.shared_masks is None:
            boxes = [out[0][i].boxes for i in range(b_count)]
            prefix.shared_masks = SharedMasks(boxes, _mask_features(model, prefix, boxes))
        if prefix.shared_masks is None:  # a TTA view: its own deterministic detections first
            run_suffix(model, prefix, control, [[None] * b_count], [0.0], masks="shared")
        cache = prefix.shared_masks
        sources: list[list[tuple[Tensor, Tensor]]] = []  # [P][B] (partner index or -1, own row)
        extra: list[list[Tensor]] = [[] for _ in range(b_count)]
        n_extra = [0] * b_count
        for p in range(p_count):
            row = []
            for i in range(b_count):
                boxes = out[p][i].boxes
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
        extra_features = _mask_features(model, prefix, [torch.cat(e) if e else cache.boxes[i][:0]
                                                        for i, e in enumerate(extra)])
    weight = predictor.mask_fcn_logits.weight[:, :, 0, 0]  # [C, D]
    bias = predictor.mask_fcn_logits.bias
    for p in range(p_count):
        for i in range(b_count):
            raw = out[p][i]
            partner, own = sources[p][i]
            f = cache.features[i][partner.clamp(min=0)]  # [n, D, M, M]
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


def _to_original(prefix: Prefix, out: list[list[Raw]]) -> list[list[Detections]]:
    """``transform.postprocess``: boxes back to the input image size, masks pasted into it."""
    result = []
    for row in out:
        dets = []
        for i, raw in enumerate(row):
            boxes = resize_boxes(raw.boxes, prefix.image_sizes[i], prefix.original_sizes[i])
            masks = None
            if raw.masks is not None:
                if raw.masks.shape[0] == 0:
                    masks = boxes.new_zeros((0, *prefix.original_sizes[i]))
                else:
                    masks = paste_masks_in_image(raw.masks, boxes, prefix.original_sizes[i])[:, 0]
            dets.append(Detections(boxes, raw.scores, raw.labels, raw.probs, masks, raw.kind))
        result.append(dets)
    return result


# --------------------------------------------------------------------------- public API


def resolve_sites(model: nn.Module, config: PassesConfig) -> tuple[str, tuple[str, ...]]:
    """The model family and the dropout sites: the user's, or the family's defaults."""
    family = model_family(model)
    sites = tuple(config.sites) if config.sites else default_sites(family, model)
    return family, sites


def _apply_view(view: View, image: Tensor) -> Tensor:
    return image if view.kind == "identity" else apply_view(view, image)


def _unapply_view(view: View, det: Detections, size: tuple[int, int]) -> Detections:
    if view.kind == "identity":
        return det
    boxes, masks = unapply_view(view, det.boxes, det.masks, size)
    return Detections(boxes, det.scores, det.labels, det.probs, masks, det.prob_kind)


def run_passes(
    model: nn.Module,
    images: Sequence[Tensor],
    config: PassesConfig,
    seeds: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    amp: bool = False,
    fast: bool | None = None,
    dense: bool = True,
) -> list[ImagePasses]:
    """The deterministic pass and ``V * T`` stochastic passes for each image.

    Args:
        model: a torchvision detector of a supported family, in ``eval()`` mode (it is moved
            to ``device``; its weights are never changed).
        images: float ``[3, H, W]`` tensors in [0, 1], sizes may differ.
        config: passes (T), dropout rate(s), sites, TTA views, chunk cap, fast/plain default.
        seeds: one per image; image ``i``'s generators derive from ``seeds[i]`` only
            (default ``config.seed + i``, which does depend on the batch order).
        device, amp: where to run; ``amp`` enables ``torch.autocast`` (postprocessing stays float32).
        fast: override ``config.fast``: True = prefix once + batched suffix; False = the plain path.
        dense: gather the pre-threshold candidates (``ImagePasses.candidates``; False: ``None``,
            what ``benchmarks/bench_passes.py`` compares against).

    Returns one :class:`ImagePasses` per image, tensors on the CPU.
    """
    if not images:
        return []
    device = torch.device(device)
    family, sites = resolve_sites(model, config)
    fast = config.fast if fast is None else fast
    if fast and not all(in_suffix(s, family) for s in sites):
        logger.info("dropout sites %s lie upstream of the %s suffix: using the plain path", sites, family)
        fast = False
    if seeds is None:
        seeds = [config.seed + i for i in range(len(images))]
    if len(seeds) != len(images):
        raise ValueError(f"got {len(seeds)} seeds for {len(images)} images")
    rates = config.rates()
    views = parse_views(["identity", *config.tta])
    if model.training:
        raise ValueError("run_passes expects the model in eval() mode")
    model.to(device)
    images = [im.to(device) for im in images]
    b_count = len(images)
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    gens = [[[torch.Generator(device=device).manual_seed(pass_seed(s, v, t)) for t in range(len(rates))]
             for v in range(len(views))] for s in seeds]
    results: list[list[list[Detections]]] = [[[] for _ in views] for _ in images]
    kind = "softmax" if family in ("rcnn", "ssd") else "sigmoid"
    dense = [DenseAccumulator(kind, config.dense_candidates) for _ in images] if dense else None  # identity view
    chunk = config.chunk if config.chunk > 0 else len(rates)
    autocast = torch.autocast(device.type, enabled=amp) if amp else contextlib.nullcontext()
    with torch.inference_mode(), autocast, mc_dropout(model, sites, 0.0, [None]) as control:
        with control.layout([Chunk(None, 0.0)]):
            base = compute_prefix(model, images, family)
        masks = config.masks if fast else "exact"
        deterministic = run_suffix(model, base, control, [[None] * b_count], [0.0], masks, dense, choose=True)[0]
        embedding = embeddings(base)
        for v, view in enumerate(views):
            if fast:
                prefix = base if view.kind == "identity" else _view_prefix(model, images, view, family, control)
                for start in range(0, len(rates), chunk):
                    stop = min(start + chunk, len(rates))
                    g = [[gens[i][v][t] for i in range(b_count)] for t in range(start, stop)]
                    acc = dense if view.kind == "identity" and dense else None
                    dets = run_suffix(model, prefix, control, g, rates[start:stop], masks, acc)
                    for row in dets:
                        for i in range(b_count):
                            results[i][v].append(row[i])
            else:
                for i in range(b_count):
                    for t, rate in enumerate(rates):
                        g = gens[i][v][t]
                        # the whole model per pass: user sites upstream of the suffix get dropout too
                        with control.layout([Chunk(g, rate)]):
                            prefix = _view_prefix(model, [images[i]], view, family, control, layout=False)
                        acc = [dense[i]] if view.kind == "identity" and dense else None
                        results[i][v].append(run_suffix(model, prefix, control, [[g]], [rate], dense=acc)[0][0])
    out = []
    for i in range(b_count):
        passes, names = [], []
        for v, view in enumerate(views):
            for det in results[i][v]:
                passes.append(_unapply_view(view, det, sizes[i]).to("cpu"))
                names.append(view.name)
        candidates = dense[i].candidates() if dense else None
        if candidates is not None:
            candidates.boxes = resize_boxes(candidates.boxes, base.image_sizes[i], base.original_sizes[i])
        out.append(ImagePasses(deterministic[i].to("cpu"), passes, names, embedding[i].cpu(), candidates))
    return out


def _view_prefix(model: nn.Module, images: Sequence[Tensor], view: View, family: str,
                 control: MCDropout, layout: bool = True) -> Prefix:
    """The prefix of ``images`` seen through ``view`` (no dropout unless the caller set a layout)."""
    viewed = [_apply_view(view, im) for im in images]
    with _view_transform(model, view):
        if not layout:
            return compute_prefix(model, viewed, family)
        with control.layout([Chunk(None, 0.0)]):
            return compute_prefix(model, viewed, family)


@contextlib.contextmanager
def _view_transform(model: nn.Module, view: View):
    """For ``scale:S`` views, scale the transform's ``min_size``/``max_size`` by S meanwhile.

    ``GeneralizedRCNNTransform`` resizes every image to ``min_size``, which would undo the
    view's rescale; scaling its target sizes makes the network see the image at S times its
    usual resolution. Fixed-size transforms (SSD) are left alone. Restored on exit.
    """
    transform = getattr(model, "transform", None)
    if view.kind != "scale" or transform is None or getattr(transform, "fixed_size", None):
        yield
        return
    min_size, max_size = transform.min_size, transform.max_size
    try:
        transform.min_size = tuple(max(1, round(m * view.factor)) for m in min_size)
        transform.max_size = max(1, round(max_size * view.factor))
        yield
    finally:
        transform.min_size, transform.max_size = min_size, max_size


def torchvision_forward(model: nn.Module, images: Sequence[Tensor], sites: Sequence[str] = (),
                        rate: float = 0.0, generator: torch.Generator | None = None) -> list[dict[str, Tensor]]:
    """``model(images)`` itself, under the same hooks (one pass): the reference for the tests.

    With ``rate > 0`` the whole site input is one chunk, so give one image to compare with a
    pass of :func:`run_passes`.
    """
    with torch.inference_mode():
        if not sites:
            return model(list(images))
        with mc_dropout(model, sites, rate, [generator]):
            return model(list(images))
