"""Range and consistency checks of a config that a type check cannot make."""

from __future__ import annotations

from det_al.config.sections import MASK_MODES, TAIL_MODES, Config
from det_al.errors import InputError


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
    if p.dropout_groups != "auto" and (isinstance(p.dropout_groups, str) or p.dropout_groups < 0):
        raise InputError("passes.dropout_groups must be auto or an integer >= 0 (0: element-wise dropout), "
                         f"got {p.dropout_groups!r}", source)
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
