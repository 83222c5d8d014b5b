"""YAML configs read into frozen dataclasses.

A config has the sections ``model``, ``passes``, ``matching``, ``scoring`` and ``train``;
every key is optional except ``model.name``. ``model.num_classes`` left out (or ``null``) means
"from the data": ``det-al train`` takes it from the training file's categories, and a det_al
checkpoint supplies its own. An unknown section or
key is an error naming it. Command-line overrides use ``--set section.key=value`` where the
value is parsed as YAML (``--set passes.dropout=[0.1,0.2]``).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import yaml

from det_al.errors import InputError


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
TAIL_MODES = ("exact", "candidates")


@dataclass(frozen=True)
class PassesConfig:
    """The stochastic passes.

    ``dropout`` is one rate for every pass or a list with one rate per pass. ``sites`` are
    module paths (``roi_heads.box_predictor``) whose *input* gets dropout; empty means the
    family's default sites. ``tta`` names views (``hflip``, ``scale:0.8``); each view is run
    ``passes`` times. ``chunk`` caps how many passes run in one batched call (0: all).

    ``masks`` (Mask R-CNN, fast path): ``exact`` runs the mask branch on every pass's own boxes
    (what T whole-model passes give); ``shared`` (the default) runs it once on the deterministic boxes and
    derives each pass's masks from those features (see :mod:`det_al.inference.masks`), so T
    passes cost about one mask branch instead of T. Pass masks stay 28x28 in the box frame
    either way; only the deterministic pass is pasted into the image.

    ``dense_candidates`` (RetinaNet, FCOS): how many anchors, those the deterministic pass
    gives the highest foreground probability, are the pre-threshold candidates of the dense
    signals (:mod:`det_al.scoring.dense`; 0: every anchor).

    ``tail`` (RetinaNet, FCOS, fast path): ``exact`` runs the heads' last convolutions of every
    pass over every position; ``candidates`` only at the positions of the deterministic pass's
    ``dense_candidates`` anchors and of its anchors above the score threshold, one matrix
    product per pass batch (see :mod:`det_al.inference.one_stage`).
    """

    passes: int = 10
    dropout: float | tuple[float, ...] = 0.2
    sites: tuple[str, ...] = ()
    tta: tuple[str, ...] = ()
    fast: bool = True
    chunk: int = 0
    masks: str = "shared"
    batch_size: int = 1
    num_workers: int = 0
    seed: int = 0
    dense_candidates: int = 1000
    tail: str = "exact"

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


def _coerce(value: Any, tp: Any, where: str, source: str | None) -> Any:
    """Check ``value`` against the annotation ``tp`` (as a string or type); lists become tuples."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, a, where, source)
            except InputError as e:
                errors.append(e)
        raise errors[-1]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where} must be a list, got {value!r}", source)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, where, source) for v in value)
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise InputError(f"{where} must be a mapping, got {value!r}", source)
        return dict(value)
    if tp is Any:
        return value
    if tp is type(None):
        if value is not None:
            raise InputError(f"{where} must be null, got {value!r}", source)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where} must be a number, got {value!r}", source)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where} must be an integer, got {value!r}", source)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where} must be true or false, got {value!r}", source)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"{where} must be a string, got {value!r}", source)
        return value
    return value


def _build(cls: type, data: Any, where: str, source: str | None) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InputError(f"{where or 'config'} must be a mapping, got {type(data).__name__}", source)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise InputError(f"unknown config key '{key}' (valid: {', '.join(sorted(names))})", source)
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key, source)
        else:
            kwargs[name] = _coerce(value, tp, key, source)
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any], source: str | None = None) -> Config:
    """Build and validate a :class:`Config` from plain data (as YAML gives it)."""
    config = _build(Config, data, "", source)
    validate(config, source)
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain data (lists, dicts) that :func:`config_from_dict` turns back into ``config``."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"passes.dropout=[0.1,0.2]"`` -> ``(["passes", "dropout"], [0.1, 0.2])``."""
    if "=" not in text:
        raise InputError(f"--set expects section.key=value, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise InputError(f"--set {key}: cannot parse value '{raw}': {e}") from e
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to plain config data (a copy is returned)."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides or []:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {'.'.join(path)}: '{part}' is not a section")
        node[path[-1]] = value
    return data


def override_config(config: Config, overrides: Sequence[str], source: str | os.PathLike | None = None) -> Config:
    """``config`` with ``--set`` overrides applied and validated (``config`` is not changed).

    The one place a built config gets overrides (``det-al score``/``evaluate`` over a
    checkpoint's config, :func:`det_al.score_images`); ``source`` names the origin in errors.
    """
    if not overrides:
        return config
    source = None if source is None else os.fspath(source)
    return config_from_dict(apply_overrides(config_to_dict(config), list(overrides)), source)


def passes_overrides(
    passes: int | None = None,
    dropout: float | str | Sequence[float] | None = None,
    tta: str | Sequence[str] | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    fast: bool | None = None,
) -> list[str]:
    """``--set`` overrides of the ``passes`` section from the shortcuts of ``det-al score`` and
    :func:`det_al.score_images`; ``None`` leaves a key alone.

    ``dropout`` is one rate or one per pass (a list, or ``"0.1,0.2"``); a list of rates without
    ``passes`` also sets ``passes`` to its length. ``tta`` is a list of views or ``"hflip,scale:0.8"``.

    >>> passes_overrides(dropout="0.1,0.2", tta="hflip")
    ['passes.dropout=[0.1,0.2]', 'passes.passes=2', "passes.tta=['hflip']"]
    """
    out = []
    if passes is not None:
        out.append(f"passes.passes={passes}")
    if dropout is not None:
        if isinstance(dropout, str):
            rates = [r.strip() for r in dropout.split(",") if r.strip()]
        elif isinstance(dropout, (int, float)):
            rates = [repr(float(dropout))]
        else:
            rates = [repr(float(r)) for r in dropout]
        if not rates:
            raise InputError(f"dropout: expected a rate or a list of rates, got {dropout!r}")
        multiple = len(rates) > 1 or not isinstance(dropout, (str, int, float))
        out.append(f"passes.dropout=[{','.join(rates)}]" if multiple else f"passes.dropout={rates[0]}")
        if multiple and passes is None:
            out.append(f"passes.passes={len(rates)}")
    if tta is not None:
        views = [v.strip() for v in (tta.split(",") if isinstance(tta, str) else tta) if v.strip()]
        out.append("passes.tta=[" + ",".join(f"'{v}'" for v in views) + "]")
    for key, value in (("seed", seed), ("batch_size", batch_size), ("num_workers", num_workers)):
        if value is not None:
            out.append(f"passes.{key}={value}")
    if fast is not None:
        out.append(f"passes.fast={'true' if fast else 'false'}")
    return out


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``--set`` overrides and validate."""
    data: Any = {}
    source = None if path is None else os.fspath(path)
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError as e:
            raise InputError("config file not found", source) from e
        except yaml.YAMLError as e:
            raise InputError(f"not valid YAML: {e}".replace("\n", " "), source) from e
        if not isinstance(data, dict):
            raise InputError("config must be a YAML mapping", source)
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data, source)


def validate(config: Config, source: str | None = None) -> None:
    """Range and consistency checks that a type check cannot make."""
    m, p, s, mt = config.model, config.passes, config.scoring, config.matching
    if m.num_classes is not None and m.num_classes < 2:
        raise InputError("model.num_classes must count background and at least one class (>= 2)", source)
    if p.passes < 1:
        raise InputError(f"passes.passes must be >= 1, got {p.passes}", source)
    rates = p.rates()
    if len(rates) != p.passes:
        raise InputError(
            f"passes.dropout lists {len(rates)} rates but passes.passes is {p.passes}", source
        )
    if any(not 0.0 <= r < 1.0 for r in rates):
        raise InputError(f"passes.dropout rates must be in [0, 1), got {rates}", source)
    if p.masks not in MASK_MODES:
        raise InputError(f"passes.masks must be one of {', '.join(MASK_MODES)}, got {p.masks!r}", source)
    if p.tail not in TAIL_MODES:
        raise InputError(f"passes.tail must be one of {', '.join(TAIL_MODES)}, got {p.tail!r}", source)
    if p.dense_candidates < 0:
        raise InputError(f"passes.dense_candidates must be >= 0 (0: every anchor), got {p.dense_candidates}", source)
    if p.batch_size < 1 or p.chunk < 0 or p.num_workers < 0:
        raise InputError("passes.batch_size must be >= 1, passes.chunk and passes.num_workers >= 0", source)
    if not 0.0 < mt.iou_threshold <= 1.0:
        raise InputError(f"matching.iou_threshold must be in (0, 1], got {mt.iou_threshold}", source)
    if s.class_term not in ("variance", "entropy", "mutual_information"):
        raise InputError(
            f"scoring.class_term must be variance, entropy or mutual_information, got '{s.class_term}'",
            source,
        )
    if s.reduction not in ("max", "mean", "sum", "topk"):
        raise InputError(f"scoring.reduction must be max, mean, sum or topk, got '{s.reduction}'", source)
    bad = sorted(set(s.weights) - {"class", "box", "mask", "presence"})
    if bad:
        raise InputError(f"unknown config key 'scoring.weights.{bad[0]}' (valid: box, class, mask, presence)", source)
    if any((not isinstance(w, (int, float))) or w < 0 for w in s.weights.values()):
        raise InputError("scoring.weights must be non-negative numbers", source)
    if s.objects not in ("anchored", "all"):
        raise InputError(f"scoring.objects must be anchored or all, got '{s.objects}'", source)
    if s.empty_policy not in ("quantile", "value"):
        raise InputError(f"scoring.empty_policy must be quantile or value, got '{s.empty_policy}'", source)
    if s.empty_policy == "quantile" and not 0.0 <= s.empty_value <= 1.0:
        raise InputError("scoring.empty_value must be a quantile in [0, 1] with empty_policy quantile", source)
    if s.topk < 1:
        raise InputError("scoring.topk must be >= 1", source)
    image_fields = ("class", "box", "dense", "least_confidence", "mask", "max_entropy", "miss", "objects",
                    "presence", "rpn_gap")
    bad = sorted(set(s.image_weights) - set(image_fields))
    if bad:
        raise InputError(f"unknown config key 'scoring.image_weights.{bad[0]}' (valid: {', '.join(image_fields)})", source)
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in s.image_weights.values()):
        raise InputError("scoring.image_weights must be non-negative numbers", source)
    if s.image_weights and sum(s.image_weights.values()) <= 0:
        raise InputError("scoring.image_weights must give at least one field a positive weight", source)
    if s.image_combination not in ("weighted", "rank"):
        raise InputError(f"scoring.image_combination must be weighted or rank, got '{s.image_combination}'", source)
    if s.rank_k < 0:
        raise InputError(f"scoring.rank_k must be >= 0, got {s.rank_k}", source)
    if s.dense_term not in ("mutual_information", "entropy"):
        raise InputError(f"scoring.dense_term must be mutual_information or entropy, got '{s.dense_term}'", source)
    if s.dense_topk < 1:
        raise InputError("scoring.dense_topk must be >= 1", source)
    if not 0.0 < s.miss_iou <= 1.0:
        raise InputError(f"scoring.miss_iou must be in (0, 1], got {s.miss_iou}", source)
