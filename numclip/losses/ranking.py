"""NumCLIP's cross-modal ranking-based losses and L2RCLIP's ordinal pairwise loss
(docs/methods.md, NumCLIP and L2RCLIP).

Every function takes `mode`: "faithful" reproduces the released code (quirks included, for comparing
with the papers), "fixed" repairs the quirk. All are vectorised, device-agnostic and free of host
round trips; target range checks run only for CPU tensors (on CUDA they would force a sync, and
cross-entropy's own device assert catches them there). The ranking cross-entropy ignores target -100,
as `F.cross_entropy` does; the other terms take class indices only.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from numclip.losses.contrastive import text_to_image_kl

Mode = Literal["faithful", "fixed"]
IGNORE_INDEX = -100  # F.cross_entropy's default: a row with this target has no loss and no gradient


def check_inputs(logits: Tensor, target: Tensor, mode: str, ignore_index: bool = False,
                 host_checks: bool = True) -> None:
    """Shapes, dtype and (for CPU tensors, when `host_checks`) the range of the targets; -100 passes
    where `ignore_index`."""
    if mode not in ("faithful", "fixed"):
        raise ValueError(f"mode must be 'faithful' or 'fixed', got '{mode}'")
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, d], got shape {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"ranking weights need d >= 2 classes, got d = {logits.shape[1]} "
                         f"(S(c) = sum_j |c - j| is 0 for d = 1)")
    if target.shape != logits.shape[:1]:
        raise ValueError(f"target must be [B]={logits.shape[0]}, got shape {tuple(target.shape)}")
    if target.dtype.is_floating_point or target.dtype == torch.bool or target.is_complex():
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.is_cuda or not host_checks:
        return
    used = target[target != IGNORE_INDEX] if ignore_index else target
    if used.numel() and (int(used.min()) < 0 or int(used.max()) >= logits.shape[1]):
        allowed = f" (or {IGNORE_INDEX}, ignored)" if ignore_index else ""
        raise ValueError(f"target values must be in [0, {logits.shape[1] - 1}]{allowed}, got "
                         f"[{int(used.min())}, {int(used.max())}]")


def ranking_weights(target: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """W [B, d]: W[i, j] = |c_i - j| / S(c_i) * (d - 1) for j != c_i, W[i, c_i] = 1 (a constant).

    Negatives of a row sum to d - 1, so the average negative weight is 1: far classes are scaled up,
    near ones down. For d = 5, c = 0: [1, .4, .8, 1.2, 1.6].
    """
    classes = torch.arange(num_classes, device=target.device, dtype=dtype)
    dist = (target[:, None].to(dtype) - classes[None, :]).abs()
    weights = dist / dist.sum(dim=1, keepdim=True) * (num_classes - 1)
    return torch.where(dist == 0, torch.ones_like(weights), weights)


def ranking_weighted_cross_entropy(logits: Tensor, target: Tensor, mode: Mode = "faithful",
                                   margin: float = 1.0, reduction: str = "mean") -> Tensor:
    """NumCLIP's image->text ranking-weighted cross-entropy (`reduction` as in F.cross_entropy).

    faithful: CE(L ⊙ W, c), exactly the released `compute_ce_dis_loss` (whose weights pass through
      float32, as here). Quirk: a negative logit times a larger weight gets *more* negative, so with
      cosine logits a far class with negative similarity is pushed *less*.
    fixed (sign-safe additive margin): CE(L', c) with L'_ij = L_ij + margin · (W_ij - 1), `margin` in
      logit units. The gradient is softmax(L')_j - 1[j = c]: for equal logits a farther class (larger W)
      always has the larger softmax share and so is pushed harder, whatever the logit's sign, and the
      loss is smooth in L. The true class (W = 1) is unchanged, and so is every class when all W are 1.
    """
    check_inputs(logits, target, mode, ignore_index=True)
    return weighted_cross_entropy_unchecked(logits, target, mode, margin, reduction)


def weighted_cross_entropy_unchecked(logits: Tensor, target: Tensor, mode: Mode, margin: float,
                                     reduction: str) -> Tensor:
    """The arithmetic of `ranking_weighted_cross_entropy` without its input checks (what torch.compile
    compiles: the checks read values back to the host)."""
    weights = ranking_weights(target, logits.shape[1]).to(logits.dtype)  # float32 first, as released
    if mode == "faithful":
        weighted = logits * weights
    else:
        weighted = logits + margin * (weights - 1)
    return F.cross_entropy(weighted, target, reduction=reduction)


def ranking_weights_text(target: Tensor, num_classes: int, mode: Mode = "faithful",
                         dtype: torch.dtype = torch.float32) -> Tensor:
    """V [d, B] for the text->image direction: V[i, b] = |i - c_b| / sum_b' |i - c_b'| · n_i, 1 where c_b = i.

    faithful: n_i = d - 1 (released; the average negative weight is then (d-1)/(B - m_i), usually < 1,
      which weakens this direction). fixed: n_i = B - m_i, the number of negatives of class i in the
      batch, so the average negative weight is exactly 1. A row with no negatives is all ones.
    """
    classes = torch.arange(num_classes, device=target.device, dtype=dtype)
    dist = (classes[:, None] - target[None, :].to(dtype)).abs()  # [d, B]
    total = dist.sum(dim=1, keepdim=True)
    scale = (num_classes - 1) if mode == "faithful" else (dist > 0).sum(dim=1, keepdim=True).to(dtype)
    weights = dist / total.clamp_min(1e-12) * scale
    return torch.where(dist == 0, torch.ones_like(weights), weights)


def ranking_weighted_kl(logits: Tensor, target: Tensor, mode: Mode = "faithful",
                        target_temperature: float = 10.0) -> Tensor:
    """NumCLIP's text->image ranking-weighted KL: OrdinalCLIP's KL on L.T ⊙ V (V from `ranking_weights_text`)."""
    check_inputs(logits, target, mode)
    weights = ranking_weights_text(target, logits.shape[1], mode).to(logits.dtype)
    return text_to_image_kl(logits, target, target_temperature, weights=weights)


def regression_l1(prediction: Tensor, target: Tensor) -> Tensor:
    """L1 between the fine regressor's output and the (float) fine label."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
    return (prediction - target.to(prediction.dtype)).abs().mean()


def ordinal_pairwise_loss(image_features: Tensor, text_features: Tensor, target: Tensor) -> Tensor:
    """L2RCLIP's cross-modal ordinal pairwise loss (the released loss code; docs/methods.md, L2RCLIP).

    w_ij = (|y_i - j| - min) / max (min-max over the batch's label-distance matrix), d_ij = ||f_i - t_j||;
    L = mean_i ||f_i - t_{y_i}||² - mean_ij w_ij · d_ij: pull each image to its rank's text, push it
    from the others in proportion to the label gap. Features are used as given (pass normalised ones).
    """
    num_ranks = text_features.shape[0]
    if num_ranks < 2:
        raise ValueError("the pairwise loss needs at least 2 ranks")
    if image_features.shape[0] != target.shape[0] or image_features.shape[1] != text_features.shape[1]:
        raise ValueError(f"shapes do not fit: images {tuple(image_features.shape)}, texts "
                         f"{tuple(text_features.shape)}, target {tuple(target.shape)}")
    ranks = torch.arange(num_ranks, device=target.device, dtype=image_features.dtype)
    gap = (target[:, None].to(image_features.dtype) - ranks[None, :]).abs()
    weights = ((gap - gap.min()) / gap.max()).detach()
    distances = torch.cdist(image_features, text_features)  # [B, K]
    pull = (image_features - text_features[target]).pow(2).sum(dim=1).mean()
    return pull - (weights * distances).mean()
