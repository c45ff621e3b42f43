"""Fused Triton kernels, each beside its PyTorch reference, behind an `impl=` switch.

`impl="auto"` runs Triton on CUDA tensors when triton imports and the PyTorch path otherwise, so a
CUDA training run gets the kernels with no configuration.
"""

from numclip.kernels.cosine import cosine_logits, cosine_logits_reference
from numclip.kernels.dispatch import IMPLS, Impl, triton_available
from numclip.kernels.ranking_ce import ranking_weighted_cross_entropy

__all__ = ["IMPLS", "Impl", "cosine_logits", "cosine_logits_reference", "ranking_weighted_cross_entropy",
           "triton_available"]
