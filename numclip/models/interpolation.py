"""OrdinalCLIP rank interpolation: K rank embeddings as fixed blends of L learned base embeddings.

`linear` and `inv_prop` reproduce the released code exactly (docs/methods.md, Prompt learners):
raw weights phi(|k - anchor_j|), each row normalised. Note that released `linear` is a global blend
for L >= 3, not piecewise-linear interpolation; `piecewise` is the true interpolation between
neighbouring anchors, and `gaussian` normalises in log space, so it never gives the released
`normal` kernel's 0/0 = NaN rows.
"""

from __future__ import annotations

from typing import Optional

import torch

from numclip.core.errors import NumclipError

KINDS = ("linear", "inv_prop", "piecewise", "gaussian")


def anchors(num_ranks: int, num_base_ranks: int) -> torch.Tensor:
    """Positions of the base ranks on the rank axis: linspace(0, K-1, L); L = 1 sits in the middle."""
    if num_base_ranks == 1:
        return torch.tensor([(num_ranks - 1) / 2.0], dtype=torch.float64)
    return torch.linspace(0, num_ranks - 1, num_base_ranks, dtype=torch.float64)


def interpolation_weights(num_ranks: int, num_base_ranks: int, kind: str = "linear",
                          bandwidth: Optional[float] = None) -> torch.Tensor:
    """W [K, L] with rows summing to 1, so that rank_k = sum_j W[k, j] * base_j."""
    if not 1 <= num_base_ranks <= num_ranks:
        raise NumclipError(f"num_base_ranks must be in 1..num_ranks ({num_ranks}), got {num_base_ranks}")
    if kind not in KINDS:
        raise NumclipError(f"interpolation must be one of {', '.join(KINDS)}, got '{kind}'")
    ranks = torch.arange(num_ranks, dtype=torch.float64)[:, None]
    anchor = anchors(num_ranks, num_base_ranks)
    dist = (ranks - anchor[None]).abs()
    if kind == "linear":
        raw = 1.0 - dist / (num_ranks - 1)
    elif kind == "inv_prop":
        raw = 1.0 / (dist + 1e-5)
    elif kind == "piecewise":
        return _piecewise(ranks[:, 0], anchor)
    else:
        if bandwidth is None:
            # half the anchor spacing: a neighbouring anchor gets weight exp(-2) of the nearest one
            bandwidth = 0.5 * (num_ranks - 1) / (num_base_ranks - 1) if num_base_ranks > 1 else float(num_ranks)
        return torch.softmax(-dist.pow(2) / (2.0 * bandwidth ** 2), dim=1)
    return raw / raw.sum(dim=1, keepdim=True)


def _piecewise(ranks: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    num_base = anchor.numel()
    weights = torch.zeros(ranks.numel(), num_base, dtype=torch.float64)
    if num_base == 1:
        weights[:, 0] = 1.0
        return weights
    right = torch.searchsorted(anchor, ranks, right=True).clamp(1, num_base - 1)
    left = right - 1
    t = (ranks - anchor[left]) / (anchor[right] - anchor[left])
    rows = torch.arange(ranks.numel())
    weights[rows, left] = 1.0 - t
    weights[rows, right] += t
    return weights
