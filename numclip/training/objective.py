"""The training objective: the weighted sum of the loss terms a method switches on (`methods.*.loss`).

`TERMS` maps each weight of LossWeights to the term it weights; a term is a formula of numclip.losses
(or a fused kernel) applied to one batch. Adding a loss is its formula, its weight and its entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from numclip.config import LossWeights
from numclip.kernels import ranking_weighted_cross_entropy  # fused on CUDA
from numclip.losses.contrastive import cross_entropy, text_to_image_kl
from numclip.losses.ranking import ordinal_pairwise_loss, ranking_weighted_kl, regression_l1
from numclip.losses.soft_labels import class_frequency_weights, label_distribution_loss, soft_label_cross_entropy
from numclip.models.ordinal import ConceptModel, RankPromptModel


@dataclass(frozen=True)
class Batch:
    """One batch as the terms see it (logits in float32; targets are the head's classes).

    The head's classes are NumCLIP's concepts for the concept head (`model.class_targets`), so the soft
    labels (and sigma) and the class weights are over the concepts there, not over the fine ranks."""

    model: RankPromptModel
    features: torch.Tensor
    prototypes: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    mode: str  # LossWeights.ranking_mode
    sigma: float  # LossWeights.soft_sigma
    expectation: float  # LossWeights.dldl_expectation
    class_weights: Optional[torch.Tensor] = None  # [classes], from LossWeights.class_weights; None: all 1


def _regression(b: Batch) -> torch.Tensor:
    if not isinstance(b.model, ConceptModel):  # the params refuse this combination first
        raise RuntimeError("the regression loss needs the concept head")
    return regression_l1(b.model.regress(b.logits), b.model.bins.fine(b.labels))


def _pairwise(b: Batch) -> torch.Tensor:
    return ordinal_pairwise_loss(F.normalize(b.features.float(), dim=-1),
                                 F.normalize(b.prototypes.float(), dim=-1), b.targets)


TERMS: dict[str, Callable[[Batch], torch.Tensor]] = {  # in TERM_WEIGHTS' order, which the sum follows
    "ce": lambda b: cross_entropy(b.logits, b.targets, b.class_weights),
    "kl": lambda b: text_to_image_kl(b.logits, b.targets),
    "ranking_ce": lambda b: ranking_weighted_cross_entropy(b.logits, b.targets, mode=b.mode),
    "ranking_kl": lambda b: ranking_weighted_kl(b.logits, b.targets, b.mode),
    "regression": _regression,
    "pairwise": _pairwise,
    "soft_ce": lambda b: soft_label_cross_entropy(b.logits, b.targets, b.sigma, b.class_weights),
    "dldl": lambda b: label_distribution_loss(b.logits, b.targets, b.sigma, b.expectation),
}


CLASS_WEIGHT_POWER = {"inverse": 1.0, "inverse_sqrt": 0.5}  # LossWeights.class_weights: w_k ~ n_k^-power


def training_class_weights(model: RankPromptModel, labels: Sequence[int], weights: LossWeights,
                           device: torch.device) -> Optional[torch.Tensor]:
    """The class weights [classes] for `training_loss`, from the training split's fine labels mapped to the
    head's classes (NumCLIP's concepts for the concept head); None when `weights.class_weights` is "none"."""
    if weights.class_weights == "none":
        return None
    targets = model.class_targets(torch.as_tensor(list(labels), dtype=torch.long, device=device))
    return class_frequency_weights(targets, len(model.card.prompt_words), CLASS_WEIGHT_POWER[weights.class_weights])


def head_outputs(model: RankPromptModel, features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor,
                 weights: LossWeights) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, the terms computed with them): with the ranking CE on, the head and that loss are one
    fused op (one pass from features to loss on CUDA; the same head-then-loss arithmetic elsewhere)."""
    if weights.ranking_ce:
        loss, logits = model.logits_and_ranking_ce(features, prototypes, model.class_targets(labels),
                                                   weights.ranking_mode)
        return logits, {"ranking_ce": loss}
    return model.logits(features, prototypes), {}


def training_loss(model: RankPromptModel, features: torch.Tensor, prototypes: torch.Tensor,
                  logits: torch.Tensor, labels: torch.Tensor, weights: LossWeights,
                  fused: dict[str, torch.Tensor] | None = None, class_weights: Optional[torch.Tensor] = None,
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total loss, each enabled term) for one batch, computed in float32; `fused` holds the terms
    `head_outputs` already computed. `class_weights` [classes] weights the ce and soft_ce terms: the
    caller computes them once from the training labels when `weights.class_weights` is not "none"."""
    fused = fused or {}
    logits = logits.float()
    batch = Batch(model, features, prototypes, logits, labels, model.class_targets(labels), weights.ranking_mode,
                  weights.soft_sigma, weights.dldl_expectation, class_weights)
    terms = {name: fused[name] if name in fused else term(batch) for name, term in TERMS.items()
             if getattr(weights, name)}
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, terms
