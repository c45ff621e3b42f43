"""The counting domain ("Teaching CLIP to Count to Ten"): count words in captions, counterfactual
captions, mixed counting batches, CountBench and attribute probes. Its loss is numclip.losses.counting."""

from numclip.counting.captions import (
    COUNT_WORDS,
    COUNTS,
    CountMention,
    all_counterfactuals,
    count_captions,
    counterfactual,
    find_count,
    is_counting,
    with_count,
)
from numclip.counting.sampler import CountingBatchSampler

__all__ = [
    "COUNT_WORDS", "COUNTS", "CountMention", "CountingBatchSampler", "all_counterfactuals",
    "count_captions", "counterfactual", "find_count", "is_counting", "with_count",
]
