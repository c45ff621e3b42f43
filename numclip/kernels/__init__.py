"""Fused Triton kernels, each beside its PyTorch reference, behind an `impl=` switch.

`impl="auto"` runs the PyTorch path on CPU and, on CUDA, whichever of Triton and eager PyTorch measured
faster for that shape (timed once, remembered), so a CUDA training run gets the kernels where they win,
with no configuration.
"""

from numclip.kernels.cosine import (
                                    cosine_logits,
                                    cosine_logits_reference,
                                    cosine_ranking_cross_entropy,
                                    cosine_ranking_reference,
)
from numclip.kernels.dispatch import IMPLS, MEASURED, Impl, triton_available
from numclip.kernels.ranking_ce import ranking_weighted_cross_entropy

__all__ = ["IMPLS", "MEASURED", "Impl", "cosine_logits", "cosine_logits_reference", "cosine_ranking_cross_entropy",
           "cosine_ranking_reference", "ranking_weighted_cross_entropy", "triton_available"]
