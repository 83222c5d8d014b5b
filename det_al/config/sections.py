"""The sections of a config as frozen dataclasses: ``model``, ``passes``, ``matching``,
``scoring``, ``train``, ``loop``, and :class:`Config` holding them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class ModelConfig:
    """Which torchvision detector to build.

    ``name`` is a builder name from :data:`det_al.models.build.BUILDERS`; ``num_classes`` counts the
    background (torchvision's convention), ``None`` meaning "from the data" (the training
    file's categories + 1, or the checkpoint's); ``options`` are passed to the builder
    (``min_size``, ``max_size``, ``box_score_thresh``, ``box_detections_per_img``, ...).
    """

    name: str = ""
    num_classes: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


MASK_MODES = ("exact", "shared")
TAIL_MODES = ("auto", "exact", "candidates")


@dataclass(frozen=True)
class PassesConfig:
    """The stochastic passes.

    ``dropout`` is one rate for every pass or a list with one rate per pass. ``sites`` are
    module paths (``roi_heads.box_predictor``) whose *input* gets dropout; empty means the
    family's default sites. ``tta`` names views (``hflip``, ``scale:0.8``); each view is run
    ``passes`` times. ``chunk`` caps how many passes run in one batched call (0: all).

    ``dropout_groups``: 0 drops each input value of a site on its own; N > 0 keeps or drops
    the site input's channels in N contiguous groups, one draw per group for the whole image in
    a pass (dropout on the site's weights: each pass one sampled sub-network); ``auto`` (the
    default) is 8 for RetinaNet, FCOS and SSD and 0 for the R-CNNs, as measured (docs/scoring.md). The heads' last convolutions of FCOS are then computed for all passes from
    N partial outputs (:mod:`det_al.inference.grouped`), RetinaNet's and SSD's only at the
    entries or anchors a bound lets cross the score threshold (:mod:`det_al.inference.certified`):
    exact passes for about the price of one convolution.

    ``masks`` (Mask R-CNN, fast path): ``exact`` runs the mask branch on every pass's own boxes
    (what T whole-model passes give); ``shared`` (the default) runs it once on the deterministic boxes and
    derives each pass's masks from those features (see :mod:`det_al.inference.masks`), so T
    passes cost about one mask branch instead of T. Pass masks stay 28x28 in the box frame
    either way; only the deterministic pass is pasted into the image.

    ``dense_candidates`` (RetinaNet, FCOS): how many anchors, those the deterministic pass
    gives the highest foreground probability, are the pre-threshold candidates of the dense
    signals (:mod:`det_al.scoring.dense`; 0: every anchor).

    ``tail`` (RetinaNet, FCOS, SSD; fast path): ``exact`` runs the heads' last convolutions of
    every pass over every position; ``candidates`` only at the positions of the deterministic
    pass's ``dense_candidates`` anchors and of its anchors above the score threshold, one matrix
    product per pass batch (see :mod:`det_al.inference.restricted`); SSD's dense candidates are
    then those ``dense_candidates`` anchors too, instead of every default box. ``auto`` (the
    default) is ``candidates`` for FCOS and SSD and ``exact`` for RetinaNet, whose image
    ranking the restriction measurably changed on a trained model
    (``benchmarks/bench_tail_agreement.py``, docs/scoring.md), when dropout is element-wise;
    with channel groups it is exact: only where a bound lets a pass detect for RetinaNet and SSD.
    """

    passes: int = 10
    dropout: float | tuple[float, ...] = 0.2
    dropout_groups: int | str = "auto"
    sites: tuple[str, ...] = ()
    tta: tuple[str, ...] = ()
    fast: bool = True
    chunk: int = 0
    masks: str = "shared"
    batch_size: int = 1
    num_workers: int = 0
    seed: int = 0
    dense_candidates: int = 1000
    tail: str = "auto"

    def rates(self) -> list[float]:
        """The dropout rate of each pass, ``len == passes``."""
        if isinstance(self.dropout, (int, float)):
            return [float(self.dropout)] * self.passes
        return [float(p) for p in self.dropout]


@dataclass(frozen=True)
class MatchingConfig:
    """Matching detections of the passes into objects (see :mod:`det_al.scoring.matching`)."""

    iou_threshold: float = 0.5
    class_aware: bool = False


@dataclass(frozen=True)
class ScoringConfig:
    """Per-object uncertainty and per-image informativeness (see :mod:`det_al.scoring.informativeness`)."""

    class_term: str = "variance"
    weights: Mapping[str, float] = field(
        default_factory=lambda: {"class": 1.0, "box": 1.0, "mask": 1.0, "presence": 1.0}
    )
    reduction: str = "mean"
    topk: int = 3
    objects: str = "anchored"
    min_score: float = 0.05
    certain_threshold: float = 0.05
    empty_policy: str = "quantile"
    empty_value: float = 0.5
    dense_term: str = "mutual_information"
    dense_topk: int = 10
    miss_iou: float = 0.5
    # The default informativeness: presence, least_confidence and rpn_gap fused by rank, the
    # combination that found the model's errors best in benchmarks/bench_error_capture.py
    # (README, "does the score find the model's errors?"). {} gives the per-object reduction alone.
    image_weights: Mapping[str, float] = field(
        default_factory=lambda: {"presence": 1.0, "least_confidence": 1.0, "rpn_gap": 1.0}
    )
    image_combination: str = "rank"
    rank_k: float = 60.0


@dataclass(frozen=True)
class TrainConfig:
    """Training (``det-al train``, the demo, the loop)."""

    epochs: int = 10
    batch_size: int = 4
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    augment: tuple[Mapping[str, Any], ...] = ()
    eval_every: int = 1
    num_workers: int = 0
    seed: int = 0
    max_minutes: float = 0.0
    grad_clip: float = 0.0
    batchnorm: str = "auto"


@dataclass(frozen=True)
class LoopConfig:
    """The simulated active-learning loop (``det-al loop``, see :mod:`det_al.loop.rounds`).

    ``rounds`` selections follow the first training; each picks ``budget`` images, or images
    whose predicted boxes add up to at most ``budget_boxes`` when that is > 0. ``strategies``
    are names of :data:`det_al.selection.strategies.STRATEGIES` (``top:class`` ranks by one component);
    every strategy and seed in ``seeds`` starts from the same labelled set. ``retrain`` is
    ``scratch`` (a new model each round) or ``finetune`` (from the previous round's weights).
    ``finetune_epochs`` and ``finetune_lr``: epochs and learning rate of each fine-tuning round
    (0: ``train.epochs`` / ``train.lr``; round 0 always trains from scratch with ``train``);
    ``finetune_warmup_iters``: the warm-up of a fine-tuning round, in its own optimiser steps
    (default 0: none; ``train.warmup_iters`` is for training from scratch, and a fine-tuning
    round of fewer steps than that would never leave it).
    ``pre_factor``: candidates per budget slot for the ``diverse`` strategy. ``fusion_weights``
    (ranking field -> weight; empty: informativeness 1, novelty 1) and ``fusion_k``: the
    reciprocal-rank fusion of the ``fused`` strategy (and of ``diverse:fused``'s pre-filter).
    ``self_training``: train each round after the first on the labelled images plus the
    unselected pool images' confident pseudo-labels (:mod:`det_al.loop.self_training`):
    detections scoring ``>= pseudo_threshold`` become labels, those scoring in
    ``[pseudo_ignore, pseudo_threshold)`` ignore regions (painted over in training), and an image
    with no confident detection is left out.
    """

    rounds: int = 3
    budget: int = 10
    budget_boxes: int = 0
    strategies: tuple[str, ...] = ("random", "top", "diverse")
    seeds: tuple[int, ...] = (0,)
    retrain: str = "scratch"
    finetune_epochs: int = 0
    finetune_lr: float = 0.0
    finetune_warmup_iters: int = 0
    pre_factor: float = 3.0
    fusion_weights: Mapping[str, float] = field(default_factory=dict)
    fusion_k: float = 60.0
    self_training: bool = False
    pseudo_threshold: float = 0.7
    pseudo_ignore: float = 0.2


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    passes: PassesConfig = field(default_factory=PassesConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
