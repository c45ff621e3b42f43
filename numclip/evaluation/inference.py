"""Running a model over a dataset: logits, read-outs and metrics, shared by training and evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from numclip.core.progress import progress
from numclip.evaluation.metrics import distribution_metrics, ordinal_metrics
from numclip.models.ordinal import RankPromptModel


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision elsewhere (CPU bf16 is slow and not what users expect)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def inference_prototypes(model: RankPromptModel, device: torch.device) -> torch.Tensor:
    """The text prototypes as inference uses them (eval mode, autocast): encoded once per pass."""
    was_training = model.training
    model.eval()
    with autocast(device):
        prototypes = model.prototypes()
    model.train(was_training)
    return prototypes


@torch.no_grad()
def collect_logits(model: RankPromptModel, dataset: Dataset, batch_size: int, device: torch.device,
                   prototypes: Optional[torch.Tensor] = None,
                   num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, K] (float32, CPU) and targets [N] of a whole dataset, prototypes computed once."""
    if prototypes is None:
        prototypes = inference_prototypes(model, device)
    was_training = model.training
    model.eval()
    with autocast(device):
        logits, targets = [], []
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        for images, labels in progress(loader, f"inference ({len(dataset)} images)"):
            logits.append(model(images.to(device), prototypes=prototypes).float().cpu())
            targets.append(torch.as_tensor(labels))
    model.train(was_training)
    return torch.cat(logits), torch.cat(targets).long()


@torch.no_grad()
def metrics_from_logits(model: RankPromptModel, logits: torch.Tensor, targets: torch.Tensor,
                        cs_k: Sequence[int] = (0, 1, 2)) -> dict[str, Any]:
    """Ordinal metrics of the model's read-outs (argmax/expectation, or NumCLIP's regressor), the
    distribution's (median read-out, Kendall tau, balanced accuracy, macro-F1, CS@k as `cs@k`, ECE, NLL,
    RPS, from `model.rank_probabilities`), plus the accuracy of the head's own classes (the ranks, or
    NumCLIP's concepts) and the MAE of any extra read-outs (NumCLIP's coarse stage alone)."""
    device = next(model.parameters()).device
    rank, value = model.readout(logits.to(device))
    metrics = ordinal_metrics(targets.numpy(), rank.cpu().numpy(), value.float().cpu().numpy(), model.num_ranks)
    spread = distribution_metrics(targets.numpy(), model.rank_probabilities(logits).numpy(), model.num_ranks, cs_k,
                                  pred_rank=rank.cpu().numpy())
    metrics.update({f"cs@{k}": share for k, share in spread.pop("cs").items()}, **spread)
    classes = model.class_targets(targets.to(device)).cpu()
    metrics["class_accuracy"] = float((logits.argmax(dim=1) == classes).float().mean())
    for name, values in model.extra_readouts(logits.to(device)).items():
        metrics[f"mae_{name}"] = float((values.cpu() - targets.float()).abs().mean())
    return metrics
