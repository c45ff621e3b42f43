"""Optimisers and learning-rate schedules, built from params (shared by pretraining and training)."""

from __future__ import annotations

import math
from typing import Any

import torch

from numclip.config import Params


def make_optimizer(params: Params, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if params.train.optimizer == "adamw" else torch.optim.RAdam
    return cls(groups, weight_decay=params.train.weight_decay)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay to 0 over `total_steps`, stepped once per optimisation step."""
    total = max(total_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total)))


def make_scheduler(params: Params, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Stepped once per optimisation step (milestones are given in epochs)."""
    cfg = params.train
    if cfg.schedule == "cosine":
        return cosine_schedule(optimizer, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "multistep":
        milestones = [m * steps_per_epoch for m in cfg.milestones]
        factor = lambda step: cfg.gamma ** sum(step >= m for m in milestones)  # noqa: E731
    else:
        factor = lambda step: 1.0  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
