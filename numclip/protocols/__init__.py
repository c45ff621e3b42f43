"""Evaluation protocols: seeded training-set samplers (few-shot, distribution shift, class-balanced)
and the aggregation of fold × seed runs into mean ± std tables."""

from numclip.protocols.aggregate import aggregate, results_markdown, write_results
from numclip.protocols.samplers import (
    SAMPLERS,
    SampleReport,
    apply_sampler,
    class_balanced_weights,
    distribution_shift,
    few_shot,
)

__all__ = [
    "SAMPLERS", "SampleReport", "aggregate", "apply_sampler", "class_balanced_weights",
    "distribution_shift", "few_shot", "results_markdown", "write_results",
]
