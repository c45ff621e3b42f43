"""Params: the schema (one section per stage), reading and `--set` overrides, derived output paths.

Everything the pipeline reads comes from here; this package imports nothing above numclip.core.
"""

from numclip.config.loading import (
    apply_overrides,
    load_params,
    parse_override,
    validate_params,
)
from numclip.config.methods import (
    FixedMethod,
    InterpolatedMethod,
    LossWeights,
    MethodBase,
    MethodConfig,
    PlainMethod,
    method_config,
)
from numclip.config.schema import (
    NUMBER_WORDS,
    TASK_PRESETS,
    DataConfig,
    LearningRates,
    ModelConfig,
    Params,
    SplitConfig,
    SubsetConfig,
    SyntheticConfig,
    TaskPreset,
    read_word_file,
)

__all__ = ["NUMBER_WORDS", "TASK_PRESETS", "DataConfig", "FixedMethod", "InterpolatedMethod", "LearningRates",
           "LossWeights", "MethodBase", "MethodConfig", "PlainMethod", "method_config",
           "ModelConfig", "Params", "SplitConfig", "SubsetConfig", "SyntheticConfig", "TaskPreset",
           "apply_overrides", "load_params", "parse_override", "read_word_file",
           "validate_params"]
