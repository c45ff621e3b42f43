"""Read-outs: how a row of rank logits becomes a predicted rank (argmax, or the expectation)."""

from __future__ import annotations

import torch
from torch import Tensor


def probabilities(logits: Tensor) -> Tensor:
    """Softmax over the ranks (last dimension)."""
    return torch.softmax(logits, dim=-1)


def readout_argmax(logits: Tensor) -> Tensor:
    """Most probable rank index, LongTensor [B]."""
    return logits.argmax(dim=-1)


def readout_expectation(logits: Tensor) -> Tensor:
    """Expected rank sum_k k * p_k, a real number per row: uses the whole distribution, not just its mode."""
    ranks = torch.arange(logits.shape[-1], device=logits.device, dtype=logits.dtype)
    return (probabilities(logits) * ranks).sum(dim=-1)
