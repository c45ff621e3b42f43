"""Losses and read-outs as plain functions of tensors (docs/methods.md, The loss terms).

Reference implementations: vectorised, device-agnostic (every constant is made on the input's device),
and free of host round trips, so they run unchanged on CPU or GPU and under autograd. Fused kernels
elsewhere are checked against these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_logits_target(logits: Tensor, target: Tensor) -> None:
    # Shape checks only: checking label values would force a device->host sync.
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, K], got shape {tuple(logits.shape)}")
    if target.shape != logits.shape[:1]:
        raise ValueError(f"target must be [B]={logits.shape[0]}, got shape {tuple(target.shape)}")


def cross_entropy(logits: Tensor, target: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Image->text cross-entropy over the K ranks, averaged over the batch.

    `class_weights` [K] (None: all 1) weights row i by w[target_i], and the mean stays over the batch:
    mean_i w[y_i] * CE_i, not torch's sum w CE / sum w (class_weighted_mean, which the soft labels share)."""
    _check_logits_target(logits, target)
    if class_weights is None:
        return F.cross_entropy(logits, target)
    return class_weighted_mean(F.cross_entropy(logits, target, reduction="none"), target, class_weights)


def class_weighted_mean(per_row: Tensor, targets: Tensor, class_weights: Tensor | None) -> Tensor:
    """mean_i w[y_i] * per_row_i: over the batch, not divided by sum_i w[y_i], so class weights scale a
    loss term without renormalising it per batch."""
    if class_weights is None:
        return per_row.mean()
    if class_weights.dim() != 1:
        raise ValueError(f"class_weights must be [C], got shape {tuple(class_weights.shape)}")
    return (class_weights.to(per_row.dtype)[targets] * per_row).mean()


def text_to_image_kl(
    logits: Tensor,
    target: Tensor,
    target_temperature: float = 10.0,
    weights: Tensor | None = None,
) -> Tensor:
    """OrdinalCLIP's text->image KL term (docs/methods.md, The loss terms; V = 1 unless `weights` is given).

    Each class i present in the batch looks at the batch through `logits.T[i]`; its target is
    `softmax_b(target_temperature * 1[target_b == i])`, i.e. mass spread over the images of class i.
    The loss is the sum over present classes of KL(target || softmax_b(logits.T[i] * V[i])), divided
    by the number of present classes. Absent classes contribute nothing (and get zero gradient).
    `weights` ([K, B], constant) is NumCLIP's ranking weight V.
    """
    _check_logits_target(logits, target)
    num_classes = logits.shape[1]
    per_text = logits.T  # [K, B]
    if weights is not None:
        if weights.shape != per_text.shape:
            raise ValueError(f"weights must be [K, B]={tuple(per_text.shape)}, got {tuple(weights.shape)}")
        per_text = per_text * weights.detach()
    classes = torch.arange(num_classes, device=target.device)
    member = classes[:, None] == target[None, :]  # [K, B]
    present = member.any(dim=1)  # [K]
    log_p = torch.log_softmax(target_temperature * member.to(logits.dtype), dim=1)
    log_q = torch.log_softmax(per_text, dim=1)
    kl_rows = (log_p.exp() * (log_p - log_q)).sum(dim=1)  # [K]
    kl_rows = torch.where(present, kl_rows, torch.zeros_like(kl_rows))
    return kl_rows.sum() / present.sum().to(logits.dtype)


def clip_contrastive_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float,
                          caption_group: Tensor | None = None) -> Tensor:
    """CLIP's symmetric InfoNCE over a batch of (image, caption) pairs.

    `caption_group` [B] marks identical captions: pairs in the same group are positives of each other
    (soft targets spread over the group), so a batch holding the same caption twice does not push an
    image away from its own caption's duplicate. None: every pair is its own group (plain CLIP).
    """
    if image_features.shape != text_features.shape:
        raise ValueError(f"image and text features differ in shape: {tuple(image_features.shape)} "
                         f"vs {tuple(text_features.shape)}")
    logits = logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    if caption_group is None:
        target = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    same = (caption_group[:, None] == caption_group[None, :]).to(logits.dtype)
    soft = same / same.sum(dim=1, keepdim=True)  # symmetric mask: the same targets serve both directions
    image_to_text = -(soft * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    text_to_image = -(soft * torch.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return 0.5 * (image_to_text + text_to_image)


