"""Count-aware CLIP ("Teaching CLIP to Count to Ten"): counterfactual captions, L_count, mixed batches."""

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
from numclip.counting.loss import count_aware_clip_loss, counting_contrastive_loss
from numclip.counting.sampler import CountingBatchSampler

__all__ = [
    "COUNT_WORDS", "COUNTS", "CountMention", "CountingBatchSampler", "all_counterfactuals", "count_aware_clip_loss",
    "count_captions", "counterfactual", "counting_contrastive_loss", "find_count", "is_counting", "with_count",
]
