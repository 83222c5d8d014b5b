"""Detectors from configs: torchvision's builders plus tiny CPU models of each family.

:data:`BUILDERS` maps a builder name to a callable ``builder(num_classes=C, **options)``
returning a torchvision detection model. Every torchvision builder is called with
``weights=None, weights_backbone=None``: det_al never downloads anything; trained weights come
from a checkpoint (:mod:`det_al.models.checkpoint`).

The tiny models, ``fasterrcnn_tiny`` and ``maskrcnn_tiny``, are torchvision's own
``FasterRCNN`` / ``MaskRCNN`` classes over a small four-stage conv backbone (GroupNorm,
32-64-96-128 channels, two feature levels at strides 8 and 16, 1.6-1.7 M parameters). They
take 128-pixel images by default and train from scratch on CPU in minutes, which is what
the demo and the tests need. Since they are the stock classes, every det_al code path
(``transform``, ``backbone``, ``rpn``, ``roi_heads``) is the one real models take.

``retinanet_tiny``, ``fcos_tiny`` and ``ssd_tiny`` are the one-stage families over the same
backbone, with torchvision's default heads (plain 3x3 convs, which the restricted tail of
:mod:`det_al.inference.restricted` needs) and anchors sized for the synthetic shapes of
:mod:`det_al.data.synthetic` (10-40 px at 128 px). They exist so that what det_al measures on
one-stage models can be measured on trained ones (``benchmarks/bench_tail_agreement.py``).
"""

from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from functools import partial
from typing import Any, Callable

from torch import Tensor, nn
from torchvision.models import detection
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.keypoint_rcnn import KeypointRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD, SSDHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from det_al.config import ModelConfig
from det_al.errors import InputError

logger = logging.getLogger(__name__)

FAMILIES = ("rcnn", "retinanet", "fcos", "ssd")


# --------------------------------------------------------------------------- tiny models


def _conv_block(in_channels: int, out_channels: int, stride: int, depth: int = 2) -> nn.Sequential:
    """``depth`` 3x3 convs + GroupNorm + ReLU; the first has stride ``stride``."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3,
                      stride=stride if i == 0 else 1, padding=1, bias=False),
            nn.GroupNorm(8, out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class TinyBackbone(nn.Module):
    """A four-stage stride-2 conv net with a two-level top-down merge.

    Input ``[B, 3, H, W]``; output an ``OrderedDict`` with ``"0"``: ``[B, out_channels, H/8,
    W/8]`` and ``"1"``: ``[B, out_channels, H/16, W/16]`` (the feature-map contract of
    torchvision's ``BackboneWithFPN``, with ``out_channels`` set).
    """

    def __init__(self, channels: tuple[int, int, int, int] = (32, 64, 96, 128), out_channels: int = 128):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.stage1 = _conv_block(3, c1, 2, depth=1)  # stride 2
        self.stage2 = _conv_block(c1, c2, 2)  # stride 4
        self.stage3 = _conv_block(c2, c3, 2)  # stride 8
        self.stage4 = _conv_block(c3, c4, 2)  # stride 16
        self.lateral3 = nn.Conv2d(c3, out_channels, 1)
        self.lateral4 = nn.Conv2d(c4, out_channels, 1)
        self.smooth3 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        c3 = self.stage3(self.stage2(self.stage1(x)))
        c4 = self.stage4(c3)
        p4 = self.lateral4(c4)
        top_down = nn.functional.interpolate(p4, size=c3.shape[-2:], mode="nearest")
        p3 = self.smooth3(self.lateral3(c3) + top_down)
        return OrderedDict([("0", p3), ("1", p4)])


def _tiny_rcnn_kwargs(num_classes: int, representation_size: int, options: dict[str, Any]) -> dict[str, Any]:
    """Defaults of the tiny R-CNN models, overridden by ``options``."""
    backbone = TinyBackbone()
    out = backbone.out_channels
    kwargs: dict[str, Any] = dict(
        backbone=backbone,
        num_classes=num_classes,
        min_size=128,
        max_size=128,
        rpn_anchor_generator=AnchorGenerator(
            sizes=((16, 24, 32), (48, 64, 96)), aspect_ratios=((0.5, 1.0, 2.0),) * 2
        ),
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["0", "1"], output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(out * 7 * 7, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128,
        box_batch_size_per_image=64,
        box_detections_per_img=50,
    )
    # FasterRCNN insists on num_classes=None when a box_predictor is given.
    kwargs["num_classes"] = None
    kwargs.update(options)
    return kwargs


def fasterrcnn_tiny(num_classes: int, representation_size: int = 128, **options: Any) -> FasterRCNN:
    """A 1.6 M-parameter Faster R-CNN for 128-pixel images (see the module docstring).

    ``options`` are ``FasterRCNN`` / ``GeneralizedRCNNTransform`` keyword arguments
    (``min_size``, ``box_score_thresh``, ...) and override the defaults.
    """
    return FasterRCNN(**_tiny_rcnn_kwargs(num_classes, representation_size, options))


def maskrcnn_tiny(
    num_classes: int, representation_size: int = 128, mask_channels: int = 64, **options: Any
) -> MaskRCNN:
    """``fasterrcnn_tiny`` plus a two-conv mask head (14x14 RoIs, 28x28 masks)."""
    kwargs = _tiny_rcnn_kwargs(num_classes, representation_size, {})
    out = kwargs["backbone"].out_channels
    kwargs.update(
        mask_roi_pool=MultiScaleRoIAlign(featmap_names=["0", "1"], output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(out, [mask_channels, mask_channels], 1),
        mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes),
    )
    kwargs.update(options)
    return MaskRCNN(**kwargs)

# Anchors of the one-stage tiny models, per feature level (strides 8 and 16), for the 10-40 px
# shapes of the synthetic data at 128 px: the R-CNN RPN's sizes shifted down, since a one-stage
# head has no second stage to refine a loose anchor.
_TINY_ANCHOR_SIZES = ((12, 16, 24), (32, 44, 60))


def retinanet_tiny(num_classes: int, **options: Any) -> RetinaNet:
    """torchvision's ``RetinaNet`` (default head: four 3x3 conv + ReLU layers and a 3x3
    ``cls_logits`` / ``bbox_reg``) over :class:`TinyBackbone`, 128-pixel images, 9 anchors
    per position. ``options`` are ``RetinaNet`` / ``GeneralizedRCNNTransform`` keyword
    arguments and override the defaults."""
    kwargs: dict[str, Any] = dict(
        backbone=TinyBackbone(),
        num_classes=num_classes,
        min_size=128,
        max_size=128,
        anchor_generator=AnchorGenerator(sizes=_TINY_ANCHOR_SIZES, aspect_ratios=((0.5, 1.0, 2.0),) * 2),
        detections_per_img=50,
    )
    kwargs.update(options)
    return RetinaNet(**kwargs)


def fcos_tiny(num_classes: int, **options: Any) -> FCOS:
    """torchvision's ``FCOS`` (default head) over :class:`TinyBackbone`, 128-pixel images.

    One anchor per position, as large as the level's stride (8 and 16 px), as torchvision's
    ``fcos_resnet50_fpn`` has; FCOS assigns an object to a level by its extent (up to 4x the
    anchor size on the first level), so the synthetic shapes mostly train the stride-8 level."""
    kwargs: dict[str, Any] = dict(
        backbone=TinyBackbone(),
        num_classes=num_classes,
        min_size=128,
        max_size=128,
        anchor_generator=AnchorGenerator(sizes=((8,), (16,)), aspect_ratios=((1.0,),) * 2),
        detections_per_img=50,
    )
    kwargs.update(options)
    return FCOS(**kwargs)


def ssd_tiny(num_classes: int, **options: Any) -> SSD:
    """torchvision's ``SSD`` with its ``SSDHead`` (one plain 3x3 conv per level and task) over
    :class:`TinyBackbone`, fixed 128x128 input (SSD resizes to ``size``, ignoring aspect).

    ``DefaultBoxGenerator`` boxes per position: scales 0.1 and 0.25 of the image (13 and 32 px),
    each with the geometric mean of its scale and the next (20 and 40 px) and aspect ratios 2
    and 1/2: 4 boxes per position."""
    backbone = TinyBackbone()
    anchor_generator = DefaultBoxGenerator(aspect_ratios=[[2], [2]], scales=[0.1, 0.25, 0.4], steps=[8, 16])
    head = SSDHead([backbone.out_channels] * 2, anchor_generator.num_anchors_per_location(), num_classes)
    kwargs: dict[str, Any] = dict(
        backbone=backbone,
        anchor_generator=anchor_generator,
        size=(128, 128),
        num_classes=num_classes,
        head=head,
        detections_per_img=50,
    )
    kwargs.update(options)
    return SSD(**kwargs)


# --------------------------------------------------------------------------- registry


def _no_download(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``builder`` with ``weights=None, weights_backbone=None`` fixed."""
    return partial(builder, weights=None, weights_backbone=None)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "fasterrcnn_resnet50_fpn": _no_download(detection.fasterrcnn_resnet50_fpn),
    "fasterrcnn_resnet50_fpn_v2": _no_download(detection.fasterrcnn_resnet50_fpn_v2),
    "fasterrcnn_mobilenet_v3_large_fpn": _no_download(detection.fasterrcnn_mobilenet_v3_large_fpn),
    "fasterrcnn_mobilenet_v3_large_320_fpn": _no_download(detection.fasterrcnn_mobilenet_v3_large_320_fpn),
    "maskrcnn_resnet50_fpn": _no_download(detection.maskrcnn_resnet50_fpn),
    "maskrcnn_resnet50_fpn_v2": _no_download(detection.maskrcnn_resnet50_fpn_v2),
    "retinanet_resnet50_fpn": _no_download(detection.retinanet_resnet50_fpn),
    "retinanet_resnet50_fpn_v2": _no_download(detection.retinanet_resnet50_fpn_v2),
    "fcos_resnet50_fpn": _no_download(detection.fcos_resnet50_fpn),
    "ssd300_vgg16": _no_download(detection.ssd300_vgg16),
    "ssdlite320_mobilenet_v3_large": _no_download(detection.ssdlite320_mobilenet_v3_large),
    "fasterrcnn_tiny": fasterrcnn_tiny,
    "maskrcnn_tiny": maskrcnn_tiny,
    "retinanet_tiny": retinanet_tiny,
    "fcos_tiny": fcos_tiny,
    "ssd_tiny": ssd_tiny,
}
"""Builder name -> ``builder(num_classes=C, **options)``; no builder downloads weights."""

# The class each builder returns: its __init__ keywords are valid options too.
_MODEL_CLASS: dict[str, type] = {
    "fasterrcnn_resnet50_fpn": FasterRCNN,
    "fasterrcnn_resnet50_fpn_v2": FasterRCNN,
    "fasterrcnn_mobilenet_v3_large_fpn": FasterRCNN,
    "fasterrcnn_mobilenet_v3_large_320_fpn": FasterRCNN,
    "maskrcnn_resnet50_fpn": MaskRCNN,
    "maskrcnn_resnet50_fpn_v2": MaskRCNN,
    "retinanet_resnet50_fpn": RetinaNet,
    "retinanet_resnet50_fpn_v2": RetinaNet,
    "fcos_resnet50_fpn": FCOS,
    "ssd300_vgg16": SSD,
    "ssdlite320_mobilenet_v3_large": SSD,
    "fasterrcnn_tiny": FasterRCNN,
    "maskrcnn_tiny": MaskRCNN,
    "retinanet_tiny": RetinaNet,
    "fcos_tiny": FCOS,
    "ssd_tiny": SSD,
}

# Set by det_al itself, never through model.options.
_RESERVED_OPTIONS = ("weights", "weights_backbone", "progress", "num_classes", "backbone")
# Keywords that take modules or callables, which a YAML config cannot express.
_MODULE_OPTIONS = (
    "anchor_generator", "head", "norm_layer", "rpn_anchor_generator", "rpn_head", "box_roi_pool",
    "box_head", "box_predictor", "mask_roi_pool", "mask_head", "mask_predictor",
)


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``; an unknown name raises ``ValueError`` listing the valid ones."""
    try:
        return BUILDERS[name]
    except KeyError:
        raise ValueError(
            f"unknown model '{name}' (valid: {', '.join(sorted(BUILDERS))})"
        ) from None


def _numeric_defaults(name: str) -> set[str]:
    """Option names whose default value in the builder's or model's signature is a number."""
    builder = get_builder(name)
    targets = [builder.func if isinstance(builder, partial) else builder]
    cls = _MODEL_CLASS.get(name)
    if cls is not None:
        targets += [cls.__init__, GeneralizedRCNNTransform.__init__]
    names = set()
    for target in targets:
        for p in inspect.signature(target).parameters.values():
            if isinstance(p.default, (int, float)) and not isinstance(p.default, bool):
                names.add(p.name)
    return names


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def valid_options(name: str) -> set[str]:
    """The keyword options that the builder ``name`` accepts through ``model.options``.

    torchvision's detection classes forward unknown keywords to ``GeneralizedRCNNTransform``,
    which swallows them silently, so det_al checks option names itself.
    """
    builder = get_builder(name)
    target = builder.func if isinstance(builder, partial) else builder
    names = set(inspect.signature(target).parameters)
    cls = _MODEL_CLASS.get(name)
    if cls is not None:
        names |= set(inspect.signature(cls.__init__).parameters)
        if cls is not SSD:  # SSD fixes the transform's size arguments itself
            names |= set(inspect.signature(GeneralizedRCNNTransform.__init__).parameters)
    names -= {"self", "args", "kwargs", "options", *_RESERVED_OPTIONS, *_MODULE_OPTIONS}
    return names


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the detector ``cfg`` names, randomly initialised and in ``eval()`` mode.

    Raises :class:`InputError` for an unknown name (listing the valid ones) or an option the
    builder does not take (naming it).
    """
    try:
        builder = get_builder(cfg.name)
    except ValueError as e:
        raise InputError(f"model.name: {e}") from None
    options = dict(cfg.options)
    for key in options:
        if key in _RESERVED_OPTIONS:
            raise InputError(f"model.options.{key} is set by det_al and cannot be an option")
    allowed = valid_options(cfg.name)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InputError(
            f"unknown option 'model.options.{unknown[0]}' for model '{cfg.name}' "
            f"(valid: {', '.join(sorted(allowed))})"
        )
    numeric = _numeric_defaults(cfg.name)
    for key, value in options.items():
        if key in numeric and not (
            _is_number(value) or (isinstance(value, (list, tuple)) and value and all(map(_is_number, value)))
        ):
            raise InputError(f"model.options.{key} must be a number, got {value!r}")
    if cfg.num_classes is None:
        raise InputError("model.num_classes is not set (it comes from the training data or a checkpoint)")
    try:
        model = builder(num_classes=cfg.num_classes, **options)
    except (TypeError, ValueError, AttributeError, AssertionError) as e:
        raise InputError(f"cannot build model '{cfg.name}' with options {options}: {e}") from e
    logger.debug("built %s with %d parameters", cfg.name, sum(p.numel() for p in model.parameters()))
    return model.eval()


def model_family(model: nn.Module) -> str:
    """``"rcnn"`` (Faster/Mask R-CNN), ``"retinanet"``, ``"fcos"`` or ``"ssd"``, by torchvision class."""
    if isinstance(model, KeypointRCNN) or getattr(getattr(model, "roi_heads", None), "has_keypoint", lambda: False)():
        raise ValueError(
            f"unsupported detector class {type(model).__name__}: det_al scores boxes and masks, and would "
            "silently drop the keypoints (expected FasterRCNN, MaskRCNN, RetinaNet, FCOS or SSD)"
        )
    if isinstance(model, FasterRCNN):  # MaskRCNN subclasses FasterRCNN
        return "rcnn"
    if isinstance(model, RetinaNet):
        return "retinanet"
    if isinstance(model, FCOS):
        return "fcos"
    if isinstance(model, SSD):
        return "ssd"
    raise ValueError(
        f"unsupported detector class {type(model).__name__} "
        "(expected FasterRCNN, MaskRCNN, RetinaNet, FCOS or SSD)"
    )


def has_masks(model: nn.Module) -> bool:
    """Whether the model predicts instance masks (Mask R-CNN)."""
    return isinstance(model, MaskRCNN) or (
        isinstance(model, FasterRCNN) and getattr(model.roi_heads, "has_mask", lambda: False)()
    )


def prob_kind(family: str) -> str:
    """``"softmax"`` (over classes incl. background: rcnn, ssd) or ``"sigmoid"`` (per class: retinanet, fcos)."""
    if family in ("rcnn", "ssd"):
        return "softmax"
    if family in ("retinanet", "fcos"):
        return "sigmoid"
    raise ValueError(f"unknown model family '{family}' (valid: {', '.join(FAMILIES)})")


def box_predictor_classes(predictor: nn.Module) -> int | None:
    """The class count (background included) of an R-CNN box predictor, or None when it cannot be told.

    torchvision's ``FastRCNNPredictor`` has ``cls_score`` (an ``nn.Linear``); a user's own predictor
    may wrap it (``nn.Sequential(nn.Dropout(), nn.Linear(...))``: its last Linear counts), or name
    its layers otherwise (one Linear of ``n`` outputs beside one of ``4 n``, the class scores and
    the per-class boxes).

    >>> box_predictor_classes(nn.Sequential(nn.Linear(8, 5), nn.Linear(8, 20)))
    5
    """
    cls_score = getattr(predictor, "cls_score", None)
    if isinstance(cls_score, nn.Module):
        linears = [m for m in cls_score.modules() if isinstance(m, nn.Linear)]
        return linears[-1].out_features if linears else None
    outs = {m.out_features for m in predictor.modules() if isinstance(m, nn.Linear)}
    counts = [n for n in outs if 4 * n in outs]
    return counts[0] if len(counts) == 1 else None


def model_num_classes(model: nn.Module) -> int:
    """The class count including background, read from the model's classification layer.

    Raises :class:`~det_al.errors.InputError` for an R-CNN box predictor whose class count
    cannot be told (see :func:`box_predictor_classes`)."""
    family = model_family(model)
    if family == "rcnn":
        predictor = model.roi_heads.box_predictor
        n = box_predictor_classes(predictor)
        if n is None:
            raise InputError(
                f"cannot tell how many classes the box predictor {type(predictor).__name__} has: det_al reads "
                "roi_heads.box_predictor.cls_score (an nn.Linear, or a module ending in one, as in torchvision's "
                "FastRCNNPredictor), or a predictor with one Linear of n outputs and one of 4n")
        return n
    if family in ("retinanet", "fcos"):
        return model.head.classification_head.num_classes
    return model.head.classification_head.num_columns


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "BUILDERS",
    "FAMILIES",
    "TinyBackbone",
    "build_model",
    "count_parameters",
    "fasterrcnn_tiny",
    "fcos_tiny",
    "get_builder",
    "has_masks",
    "maskrcnn_tiny",
    "model_family",
    "model_num_classes",
    "prob_kind",
    "retinanet_tiny",
    "ssd_tiny",
    "valid_options",
]

