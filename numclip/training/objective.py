"""The training objective: the weighted sum of the loss terms a method switches on (`methods.*.loss`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from numclip.config import LossWeights
from numclip.kernels import ranking_weighted_cross_entropy  # fused on CUDA
from numclip.losses.contrastive import cross_entropy, text_to_image_kl
from numclip.losses.ranking import ordinal_pairwise_loss, ranking_weighted_kl, regression_l1
from numclip.models.ordinal import ConceptModel, RankPromptModel


def training_loss(model: RankPromptModel, features: torch.Tensor, prototypes: torch.Tensor,
                  logits: torch.Tensor, labels: torch.Tensor,
                  weights: LossWeights) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total loss, each enabled term) for one batch, computed in float32."""
    logits = logits.float()
    targets = model.class_targets(labels)
    terms: dict[str, torch.Tensor] = {}
    if weights.ce:
        terms["ce"] = cross_entropy(logits, targets)
    if weights.kl:
        terms["kl"] = text_to_image_kl(logits, targets)
    if weights.ranking_ce:
        terms["ranking_ce"] = ranking_weighted_cross_entropy(logits, targets, mode=weights.ranking_mode)
    if weights.ranking_kl:
        terms["ranking_kl"] = ranking_weighted_kl(logits, targets, weights.ranking_mode)
    if weights.regression:
        if not isinstance(model, ConceptModel):
            raise ValueError("the regression loss needs the concept head")
        terms["regression"] = regression_l1(model.regress(logits), model.bins.fine(labels))
    if weights.pairwise:
        terms["pairwise"] = ordinal_pairwise_loss(F.normalize(features.float(), dim=-1),
                                                  F.normalize(prototypes.float(), dim=-1), targets)
    if not terms:
        raise ValueError("every loss weight is 0: nothing to optimise")
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, terms
