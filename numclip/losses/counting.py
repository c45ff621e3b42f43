"""The counting-contrastive loss of "Teaching CLIP to Count to Ten" (docs/methods.md, Count-aware CLIP).

Like `numclip.losses.contrastive`: vectorised, device-agnostic and free of host round trips.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_shapes(image_features: Tensor, text_features: Tensor, counterfactual_features: Tensor) -> None:
    shapes = (f"image {tuple(image_features.shape)}, text {tuple(text_features.shape)}, "
              f"counterfactual {tuple(counterfactual_features.shape)}")
    if image_features.dim() != 2 or text_features.shape != image_features.shape:
        raise ValueError(f"image and text features must both be [N, D]; got {shapes}")
    n, d = image_features.shape
    cf = counterfactual_features
    if cf.dim() != 3 or cf.shape[0] != n or cf.shape[2] != d or cf.shape[1] < 1:
        raise ValueError(f"counterfactual features must be [N, M, D] with N={n}, M >= 1, D={d}; got {shapes}")


def counting_contrastive_loss(image_features: Tensor, text_features: Tensor, counterfactual_features: Tensor,
                              logit_scale: Tensor | float) -> Tensor:
    """L_count: each image must prefer its true caption over its own counterfactual caption(s).

    Row k is a softmax over [true caption, counterfactual 1..M] of image k only (no other image or
    caption of the batch takes part: those differ in more than the count), target the true caption:
    -(1/N) sum_k log(exp(s e_i.e_t) / (exp(s e_i.e_t) + sum_m exp(s e_i.e_cf,m))), with L2-normalised
    features. M = 1 is the released variant, M = 8 (every other count) is L_count+. The N counting
    samples are the only rows: pass non-counting samples to the CLIP loss, not here. N = 0 gives a zero
    still connected to the graph, so a batch without counting samples backpropagates like any other.
    """
    _check_shapes(image_features, text_features, counterfactual_features)
    image = F.normalize(image_features, dim=-1)
    true_sim = (image * F.normalize(text_features, dim=-1)).sum(dim=-1, keepdim=True)  # [N, 1]
    cf_sim = (F.normalize(counterfactual_features, dim=-1) @ image.unsqueeze(-1)).squeeze(-1)  # [N, M]
    logits = logit_scale * torch.cat([true_sim, cf_sim], dim=-1)  # column 0: the target
    nll = -F.log_softmax(logits, dim=-1)[:, 0]
    # sum / max(N, 1) == mean for N > 0, and a graph-connected 0 (not mean's NaN) for N = 0.
    return nll.sum() / max(nll.shape[0], 1)


def count_aware_clip_loss(clip_loss: Tensor, count_loss: Tensor, weight: float) -> Tensor:
    """L = L_CLIP + weight * L_count (weight is the paper's lambda, 1 there).

    The two terms stay separate: `clip_loss` is the ordinary CLIP loss on the true captions only;
    counterfactual captions are never added as negatives to it, they appear in `count_loss` alone.
    """
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"weight (lambda) must be a finite number >= 0, got {weight}")
    return clip_loss + weight * count_loss
