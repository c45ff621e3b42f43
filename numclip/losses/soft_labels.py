"""Soft ordinal labels and class-frequency weights (docs/methods.md, The loss terms).

A hard label says every wrong class is equally wrong; a Gaussian over the classes around y says a
neighbour is less wrong than a far class (soft-label CE; DLDL-v2's label distribution + expectation).
Class weights counter a skewed label distribution. Formulas of tensors only: the objective
(numclip.training.objective) decides which classes they are over (the head's) and how they are weighted.

Every loss is computed in at least float32 (half and bfloat16 logits are upcast) through log_softmax.
Class weights follow one convention everywhere: the batch mean of w[y_i] * loss_i, divided by B and
not by sum_i w[y_i] (torch's weighted mean), so a batch's loss scales with how rare its classes are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from numclip.losses.contrastive import _check_logits_target, class_weighted_mean


def _upcast(logits: Tensor) -> Tensor:
    """float32 at least: bf16/fp16 logits lose the small probabilities soft labels put weight on."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _log_soft_labels(targets: Tensor, num_classes: int, sigma: float, dtype: torch.dtype) -> Tensor:
    """log q [B, C], normalised in log space: a tiny sigma gives a one-hot row, never 0/0."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    k = torch.arange(num_classes, device=targets.device, dtype=dtype)
    distance = k[None, :] - targets.to(dtype)[:, None]
    return torch.log_softmax(-distance.square() / (2.0 * sigma**2), dim=1)


def gaussian_soft_labels(targets: Tensor, num_classes: int, sigma: float) -> Tensor:
    """q [B, C]: q_k proportional to exp(-(k - y)^2 / (2 sigma^2)) over k = 0..C-1, each row summing to 1
    (sigma in classes)."""
    return _log_soft_labels(targets, num_classes, sigma, torch.float32).exp()


def soft_label_cross_entropy(logits: Tensor, targets: Tensor, sigma: float,
                             class_weights: Tensor | None = None) -> Tensor:
    """mean_i w[y_i] * (-sum_k q_ik log softmax(logits_i)_k), q the Gaussian soft labels around y_i.

    `class_weights` [C] (None: all 1) weights row i by w[y_i]; the mean is over the batch (B), not
    torch's sum w loss / sum w. As sigma -> 0 this is the hard cross-entropy."""
    _check_logits_target(logits, targets)
    log_p = torch.log_softmax(_upcast(logits), dim=1)
    q = _log_soft_labels(targets, logits.shape[1], sigma, log_p.dtype).exp()
    per_row = -torch.where(q > 0, q * log_p, torch.zeros_like(log_p)).sum(dim=1)  # 0 log p = 0, even p = 0
    return class_weighted_mean(per_row, targets, class_weights)


def label_distribution_loss(logits: Tensor, targets: Tensor, sigma: float, expectation_weight: float) -> Tensor:
    """DLDL-v2: mean_i KL(q_i || p_i) + expectation_weight * mean_i |sum_k k p_ik - y_i|.

    q: the Gaussian soft labels around y (0 log 0 = 0); p: softmax of the logits. The KL term shapes the
    distribution, the expectation term pulls its mean, the read-out an expectation head uses, onto y."""
    _check_logits_target(logits, targets)
    log_p = torch.log_softmax(_upcast(logits), dim=1)
    log_q = _log_soft_labels(targets, logits.shape[1], sigma, log_p.dtype)
    q = log_q.exp()
    kl = torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(log_p)).sum(dim=1).mean()
    k = torch.arange(logits.shape[1], device=logits.device, dtype=log_p.dtype)
    expectation = (log_p.exp() * k).sum(dim=1)
    return kl + expectation_weight * (expectation - targets.to(log_p.dtype)).abs().mean()


def class_frequency_weights(labels: Tensor | Sequence[int], num_classes: int, power: float = 1.0) -> Tensor:
    """w [C] float32: w_k proportional to n_k^(-power) for present classes, 0 for absent ones, scaled so
    that sum_k n_k w_k = N. The mean weight per training image is then 1, so weighting leaves the loss's
    scale (and the learning rates that suit it) unchanged. power 1: inverse frequency; 0.5: its root."""
    lab = torch.as_tensor(labels, dtype=torch.long)
    if lab.dim() != 1 or lab.numel() == 0:
        raise ValueError(f"labels must be a non-empty [N], got shape {tuple(lab.shape)}")
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    if int(lab.min()) < 0 or int(lab.max()) >= num_classes:  # once per run: the host sync is harmless
        raise ValueError(f"labels must lie in [0, {num_classes}), got {int(lab.min())}..{int(lab.max())}")
    counts = torch.bincount(lab, minlength=num_classes).to(torch.float64)
    present = counts > 0
    raw = torch.where(present, counts.clamp_min(1).pow(-power), torch.zeros_like(counts))
    return (raw * lab.numel() / (counts * raw).sum()).to(torch.float32)
