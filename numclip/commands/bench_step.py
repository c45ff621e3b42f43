"""`numclip bench --step`: the share of one training step the head and the ranking loss take.

The issue it answers: is the head + loss worth fusing further once the image encoder dominates? One
step is the image tower's forward and backward, the fused head + ranking CE, and an AdamW update, on
random weights (no download) and random images; the head + loss alone is timed on the same features.
On CUDA the step runs under bf16 autocast, as training does: ViT-B/16 at batch 256 and K = 101, the
issue's case. On CPU that step takes minutes, so the tiny architecture at batch 16 stands in for it,
and its share says nothing about a GPU.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Callable

import torch

from numclip.commands.bench import time_ms
from numclip.config import ModelConfig
from numclip.core.atomic import write_csv
from numclip.evaluation.inference import autocast
from numclip.kernels import cosine_ranking_cross_entropy
from numclip.models.backbone import create_backbone


def random_images(visual: torch.nn.Module, batch: int, device: torch.device) -> torch.Tensor:
    """A batch of random images at the image tower's input size: timing needs no data."""
    size = visual.image_size
    height, width = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, height, width, device=device)


def step_share(device: torch.device, arch: str = "ViT-B-16", batch: int = 256, protos: int = 101,
               impl: str = "auto", budget_s: float = 1.0) -> dict[str, object]:
    """Median ms of a full step and of the head + loss alone, and their ratio."""
    torch.manual_seed(0)
    visual = create_backbone(ModelConfig(arch=arch)).model.visual.to(device).train()
    images = random_images(visual, batch, device)
    target = torch.randint(0, protos, (batch,), device=device)
    width = visual.output_dim
    prototypes = torch.randn(protos, width, device=device, requires_grad=True)
    scale = torch.tensor(100.0, device=device, requires_grad=True)
    optimizer = torch.optim.AdamW([*visual.parameters(), prototypes, scale], lr=1e-5)

    def head_and_loss(features: torch.Tensor) -> torch.Tensor:
        loss, _ = cosine_ranking_cross_entropy(features, prototypes.to(features.dtype), scale, target, impl=impl)
        return loss

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            features = visual(images)
            loss = head_and_loss(features)
        loss.backward()
        optimizer.step()

    with torch.no_grad(), autocast(device):
        features = visual(images[:batch])
    features = features.detach().requires_grad_()

    def head_only() -> None:
        with autocast(device):
            loss = head_and_loss(features)
        torch.autograd.grad(loss, [features, prototypes, scale])

    step_ms = time_ms(step, device, budget_s)[0]
    head_ms = time_ms(head_only, device, budget_s)[0]
    return {"arch": arch, "B": batch, "K": protos, "D": width, "dtype": "bf16" if device.type == "cuda" else "fp32",
            "step_ms": round(step_ms, 3), "head_loss_ms": round(head_ms, 4),
            "head_loss_share": round(head_ms / step_ms, 5)}


def run_step(out_dir: str | Path = "benchmarks/results", log: Callable[[str], None] = print) -> Path:
    """`numclip bench --step`: one row to benchmarks/results/step_share_<device>.csv."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    arch, batch = ("ViT-B-16", 256) if device.type == "cuda" else ("numclip-tiny", 16)
    row = step_share(device, arch, batch)
    row.update(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
               date=datetime.date.today().isoformat())
    log(f"{arch} B={batch} K={row['K']} {row['dtype']}: step {row['step_ms']:.1f} ms, head + ranking CE "
        f"{row['head_loss_ms']:.3f} ms = {row['head_loss_share']:.2%} of the step")
    out = Path(out_dir) / f"step_share_{device.type}.csv"
    write_csv(out, list(row), [list(row.values())])
    log(f"wrote {out}")
    return out
