"""YAML configs read into frozen dataclasses.

A config has the sections ``model``, ``passes``, ``matching``, ``scoring`` and ``train``;
every key is optional except ``model.name``. ``model.num_classes`` left out (or ``null``) means
"from the data": ``det-al train`` takes it from the training file's categories, and a det_al
checkpoint supplies its own. An unknown section or
key is an error naming it. Command-line overrides use ``--set section.key=value`` where the
value is parsed as YAML (``--set passes.dropout=[0.1,0.2]``).

The package: the sections as frozen dataclasses (:mod:`det_al.config.sections`), reading them
from YAML or plain data with ``--set`` overrides (:mod:`det_al.config.read`), and the range and
consistency checks a type check cannot make (:mod:`det_al.config.checks`). Import from here.
"""

from det_al.config.checks import validate
from det_al.config.read import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    override_config,
    parse_override,
    passes_overrides,
)
from det_al.config.sections import (
    MASK_MODES,
    TAIL_MODES,
    Config,
    LoopConfig,
    MatchingConfig,
    ModelConfig,
    PassesConfig,
    ScoringConfig,
    TrainConfig,
)

__all__ = [
    "Config", "ModelConfig", "PassesConfig", "MatchingConfig", "ScoringConfig", "TrainConfig", "LoopConfig",
    "MASK_MODES", "TAIL_MODES", "config_from_dict", "config_to_dict", "load_config", "override_config", "passes_overrides",
    "parse_override", "apply_overrides", "validate",
]
