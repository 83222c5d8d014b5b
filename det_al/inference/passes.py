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

  Mask R-CNN runs the mask branch on each pass's own boxes (all passes of a batch in one
  call; ``passes.masks: shared`` runs it once, on the deterministic boxes) and keeps every
  pass's masks at the mask head's own resolution in the box frame; only the deterministic
  pass is pasted into the image (:mod:`det_al.inference.masks`). RetinaNet, FCOS and SSD with
  ``passes.tail: candidates`` (the default ``auto`` for FCOS and SSD) evaluate the heads' last
  convolutions only at the deterministic pass's candidate anchors.

The modules: :mod:`~det_al.inference.prefix` (the shared part), :mod:`~det_al.inference.suffix`
(the batched stochastic part and its family dispatch), :mod:`~det_al.inference.postprocess`,
:mod:`~det_al.inference.masks`, :mod:`~det_al.inference.one_stage` (dense candidates and the
one-stage restricted tail), :mod:`~det_al.inference.restricted` (its convolutions at chosen
anchors), :mod:`~det_al.inference.grouped` and :mod:`~det_al.inference.certified` (channel-group
dropout for all passes at once), :mod:`~det_al.inference.tta` (views); this one drives them.

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
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.transform import resize_boxes

from det_al.config import PassesConfig
from det_al.inference.candidates import Candidates, DenseAccumulator
from det_al.inference.certified import Certified
from det_al.inference.detections import Detections
from det_al.inference.dropout import Chunk, MCDropout, default_sites, mc_dropout
from det_al.inference.prefix import Prefix, compute_prefix, embeddings
from det_al.inference.restricted import restrictable
from det_al.inference.suffix import Tail, run_suffix
from det_al.inference.tta import View, apply_view, parse_views, unapply_view
from det_al.models.build import model_family

__all__ = ["ImagePasses", "compute_prefix", "embeddings", "pass_seed", "resolve_sites", "run_passes",
           "run_suffix", "torchvision_forward"]

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


# --------------------------------------------------------------------------- public API


def resolve_sites(model: nn.Module, config: PassesConfig) -> tuple[str, tuple[str, ...]]:
    """The model family and the dropout sites: the user's, or the family's defaults."""
    family = model_family(model)
    sites = tuple(config.sites) if config.sites else default_sites(family, model)
    return family, sites


def _apply_view(view: View, image: Tensor) -> Tensor:
    return image if view.kind == "identity" else apply_view(view, image)


def _unapply_view(view: View, det: Detections, size: tuple[int, int]) -> Detections:
    """``det`` (made on ``view`` of an image of ``size``) in the original image's coordinates.

    Box-frame masks follow their box: mirrored with an ``hflip``, unchanged by a rescale."""
    if view.kind == "identity":
        return det
    frame = det.image_size is not None
    boxes, masks = unapply_view(view, det.boxes, None if frame else det.masks, size)
    if frame:
        masks = det.masks.flip(-1) if view.kind == "hflip" else det.masks
    return Detections(boxes, det.scores, det.labels, det.probs, masks, det.prob_kind, size if frame else None)


@dataclass
class _Run:
    """What the passes of one batch share: the resolved options, generators and accumulators."""

    model: nn.Module
    images: list[Tensor]
    family: str
    rates: list[float]
    views: list[View]
    gens: list[list[list[torch.Generator]]]  # [B][V][T]
    dense: list[DenseAccumulator] | None
    chunk: int
    masks: str
    tail: Tail | Certified | None = None


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

    Returns one :class:`ImagePasses` per image, tensors on the CPU. Mask R-CNN: the
    deterministic pass's masks are full-image maps, the passes' stay in the box frame
    (``Detections.image_size``; ``Detections.image_masks()`` pastes them).
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
    if model.training:
        raise ValueError("run_passes expects the model in eval() mode")
    rates = config.rates()
    views = parse_views(["identity", *config.tta])
    model.to(device)
    gens = [[[torch.Generator(device=device).manual_seed(pass_seed(s, v, t)) for t in range(len(rates))]
             for v in range(len(views))] for s in seeds]
    kind = "softmax" if family in ("rcnn", "ssd") else "sigmoid"
    run = _Run(model, [im.to(device) for im in images], family, rates, views, gens,
               [DenseAccumulator(kind, config.dense_candidates) for _ in images] if dense else None,
               config.chunk if config.chunk > 0 else len(rates), config.masks if fast else "exact")
    run = replace(run, tail=_tail(model, family, sites, config) if fast else None)
    autocast = torch.autocast(device.type, enabled=amp) if amp else contextlib.nullcontext()
    groups = dropout_groups(family, config)
    with torch.inference_mode(), autocast, mc_dropout(model, sites, 0.0, [None], groups) as control:
        with control.layout([Chunk(None, 0.0)]):
            base = compute_prefix(model, run.images, family)
        b_count = len(run.images)
        deterministic = run_suffix(model, base, control, [[None] * b_count], [0.0], run.masks, run.dense,
                                   choose=True, paste=True, tail=run.tail)[0]
        embedding = embeddings(base)
        results = _fast_passes(run, base, control) if fast else _plain_passes(run, control)
    return [_image_passes(run, i, base, deterministic[i], embedding[i], results[i]) for i in range(b_count)]


# The dropout sites the restricted tail (passes.tail: candidates) handles itself, per family.
TAIL_SITES = {
    "retinanet": ("head.classification_head.cls_logits", "head.regression_head.bbox_reg"),
    "fcos": ("head.classification_head.cls_logits", "head.regression_head.bbox_reg",
             "head.regression_head.bbox_ctrness"),
    "ssd": ("head",),
}


def _tail_convs(model: nn.Module, family: str) -> list[nn.Module]:
    """The head convolutions the restricted tail evaluates."""
    if family == "ssd":
        head = model.head
        return [*head.classification_head.module_list, *head.regression_head.module_list]
    modules = dict(model.named_modules())
    return [modules[s] for s in TAIL_SITES[family] if s in modules]


# passes.tail: auto, per family: the mode chosen by speed and by agreement with exact on trained
# models (benchmarks/bench_passes.py, benchmarks/bench_tail_agreement.py; docs/scoring.md).
AUTO_TAIL = {"retinanet": "exact", "fcos": "candidates", "ssd": "candidates"}


# passes.dropout_groups: auto, per family: channel groups where they make T passes cost about one
# and found the model's errors as well as element-wise dropout on trained models; element-wise for
# the R-CNNs, whose passes cost the same either way (benchmarks/bench_passes.py, bench_error_capture.py).
AUTO_GROUPS = {"retinanet": 8, "fcos": 8, "ssd": 8}


def dropout_groups(family: str, config: PassesConfig) -> int:
    """The channel groups of ``passes.dropout_groups`` (``auto``: :data:`AUTO_GROUPS`, else 0)."""
    if config.dropout_groups == "auto":
        return AUTO_GROUPS.get(family, 0)
    return int(config.dropout_groups)


def _tail(model: nn.Module, family: str, sites: Sequence[str], config: PassesConfig) -> Tail | Certified | None:
    """The restricted tail when ``passes.tail`` asks for it and the heads allow it (RetinaNet with
    channel groups and ``auto``: :mod:`det_al.inference.certified`), else ``None``."""
    groups = dropout_groups(family, config)
    if config.tail == "auto":  # channel groups: the exact tail costs about one convolution
        mode = "exact" if groups > 0 else AUTO_TAIL.get(family, "exact")
    else:
        mode = config.tail
    if config.tail == "auto" and groups > 0 and family in ("retinanet", "ssd"):
        if all(s in TAIL_SITES[family] for s in sites) and all(restrictable(c) for c in _tail_convs(model, family)):
            return Certified(groups, max(1.0 / (1.0 - r) for r in config.rates()))
    if mode != "candidates" or family not in TAIL_SITES:
        return None
    if not all(s in TAIL_SITES[family] for s in sites) or not all(restrictable(c) for c in _tail_convs(model, family)):
        logger.info("passes.tail: candidates needs plain 3x3 head convolutions and sites among %s: exact tail",
                    TAIL_SITES[family])
        return None
    return Tail(config.dense_candidates)


def _fast_passes(run: _Run, base: Prefix, control: MCDropout) -> list[list[list[Detections]]]:
    """``[B][V][T]``: per view, the prefix once and the passes in chunks of batched suffixes."""
    b_count = len(run.images)
    results: list[list[list[Detections]]] = [[[] for _ in run.views] for _ in run.images]
    for v, view in enumerate(run.views):
        identity = view.kind == "identity"
        prefix = base if identity else _view_prefix(run.model, run.images, view, run.family, control)
        for start in range(0, len(run.rates), run.chunk):
            stop = min(start + run.chunk, len(run.rates))
            g = [[run.gens[i][v][t] for i in range(b_count)] for t in range(start, stop)]
            acc = run.dense if identity and run.dense else None
            for row in run_suffix(run.model, prefix, control, g, run.rates[start:stop], run.masks, acc,
                                  tail=run.tail):
                for i in range(b_count):
                    results[i][v].append(row[i])
    return results


def _plain_passes(run: _Run, control: MCDropout) -> list[list[list[Detections]]]:
    """``[B][V][T]``: the whole model once per image, view and pass."""
    results: list[list[list[Detections]]] = [[[] for _ in run.views] for _ in run.images]
    for i, im in enumerate(run.images):
        for v, view in enumerate(run.views):
            for t, rate in enumerate(run.rates):
                g = run.gens[i][v][t]
                # the whole model per pass: user sites upstream of the suffix get dropout too
                with control.layout([Chunk(g, rate)]):
                    prefix = _view_prefix(run.model, [im], view, run.family, control, layout=False)
                acc = [run.dense[i]] if view.kind == "identity" and run.dense else None
                results[i][v].append(run_suffix(run.model, prefix, control, [[g]], [rate], dense=acc)[0][0])
    return results


def _image_passes(run: _Run, i: int, base: Prefix, deterministic: Detections, embedding: Tensor,
                  per_view: list[list[Detections]]) -> ImagePasses:
    """Image ``i``'s passes mapped back to its own coordinates, on the CPU."""
    size = (int(run.images[i].shape[-2]), int(run.images[i].shape[-1]))
    passes, names = [], []
    for view, dets in zip(run.views, per_view):
        for det in dets:
            passes.append(_unapply_view(view, det, size).to("cpu"))
            names.append(view.name)
    candidates = run.dense[i].candidates() if run.dense else None
    if candidates is not None:
        candidates.boxes = resize_boxes(candidates.boxes, base.image_sizes[i], base.original_sizes[i])
    return ImagePasses(deterministic.to("cpu"), passes, names, embedding.cpu(), candidates)


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
                        rate: float = 0.0, generator: torch.Generator | None = None,
                        groups: int = 0) -> list[dict[str, Tensor]]:
    """``model(images)`` itself, under the same hooks (one pass; ``groups``: channel-group
    dropout): the reference for the tests.

    With ``rate > 0`` the whole site input is one chunk, so give one image to compare with a
    pass of :func:`run_passes`.
    """
    with torch.inference_mode():
        if not sites:
            return model(list(images))
        with mc_dropout(model, sites, rate, [generator], groups):
            return model(list(images))
