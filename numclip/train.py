"""The training loop: per-group learning rates, AdamW/RAdam, cosine/multi-step schedule, bf16 autocast
on CUDA, checkpoint selection on the validation split, a progress bar and TensorBoard logging."""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from torchvision import transforms
from tqdm import tqdm

from numclip.atomic import write_csv, write_json
from numclip.config import Params, SubsetConfig
from numclip.data import ImageRankDataset, Manifest
from numclip.errors import NumclipError
from numclip.inference import autocast, collect_logits, metrics_from_logits
from numclip.metrics import similarity_matrix
from numclip.models.backbone import create_backbone, resolve_device
from numclip.models.ordinal import RankPromptModel, build_model, save_model
from numclip.objective import training_loss
from numclip.plots import similarity_figure
from numclip.protocols.samplers import class_balanced_sampler, distribution_shift, few_shot
from numclip.runtime import backbone_config, load_checked_manifest, seed_everything

LOWER_IS_BETTER = {"mae_argmax": True, "mae_expectation": True, "accuracy": False}


@dataclass
class TrainResult:
    method: str
    model_path: Path
    best_epoch: int
    val_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float


def model_path(params: Params, method: str) -> Path:
    return Path(params.train.models_dir) / f"{method}.safetensors"


def training_subset(manifest: Manifest, cfg: SubsetConfig) -> tuple[Manifest, Optional[dict[str, Any]]]:
    """The manifest with its train rows reduced by the protocol's sampler (val and test untouched),
    and what the sampler did, for the run's record; unchanged when no subset is configured."""
    if cfg.kind is None:
        return manifest, None
    if cfg.kind == "few_shot":
        rows, report = few_shot(manifest.rows, cfg.shots, cfg.seed)
    else:
        rows, report = distribution_shift(manifest.rows, cfg.top_k, cfg.keep_fraction, cfg.seed)
    return dataclasses.replace(manifest, rows=rows), report.as_dict()


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


def _log_prototypes(writer: SummaryWriter, model: RankPromptModel, step: int) -> None:
    with torch.no_grad():
        sim = similarity_matrix(model.prototypes().float().cpu())
    writer.add_figure("prototypes/similarity", similarity_figure(sim), global_step=step)


def _is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if LOWER_IS_BETTER[metric] else value > best


def train(params: Params, method: str, log: Callable[[str], None] = print) -> TrainResult:
    """Train `method` on the manifest's train split, select on val, save the best model."""
    start = time.time()
    cfg = params.train
    method_cfg = params.method(method)
    seed_everything(cfg.seed)
    device = resolve_device(params.model.device)
    manifest, subset = training_subset(load_checked_manifest(params), cfg.subset)
    backbone = create_backbone(backbone_config(params), device)
    model = build_model(params, method, backbone)
    val_set = ImageRankDataset(manifest, cfg.select_split, backbone.preprocess)

    run_dir = Path(cfg.runs_dir) / method
    shutil.rmtree(run_dir, ignore_errors=True)  # a re-run replaces its logs instead of mixing with them
    writer = SummaryWriter(str(run_dir))
    out_path = model_path(params, method)
    history: list[dict[str, Any]] = []

    def validate(epoch: int, step: int) -> dict[str, Any]:
        logits, targets = collect_logits(model, val_set, params.evaluate.batch_size, device)
        metrics = metrics_from_logits(model, logits, targets)
        for key in ("mae_argmax", "mae_expectation", "accuracy", "off_by_one"):
            writer.add_scalar(f"val/{key}", metrics[key], step)
        _log_prototypes(writer, model, step)
        history.append({"epoch": epoch, "step": step, **{k: metrics[k] for k in
                        ("mae_argmax", "mae_expectation", "accuracy", "off_by_one")}})
        return metrics

    best_metrics: dict[str, Any] = {}
    best_epoch = 0
    if method_cfg.learner == "fixed":
        # zero-shot: nothing is trained, the model is saved as built
        best_metrics = validate(0, 0)
        save_model(model, out_path, extra={"best_epoch": 0})
    else:
        best_epoch, best_metrics = _fit(params, method, model, manifest, backbone.preprocess, device,
                                        writer, validate, out_path, log)
    writer.add_hparams(_hparams(params, method), {f"hparam/val_{k}": best_metrics[k]
                       for k in ("mae_argmax", "mae_expectation", "accuracy")}, run_name=".")
    writer.close()
    result = TrainResult(method, out_path, best_epoch, best_metrics, history, time.time() - start)
    write_csv(Path(cfg.plots_dir) / f"{method}.csv", list(history[0]), [list(h.values()) for h in history])
    write_json(Path(cfg.metrics_dir) / f"{method}.json", {
        "method": method, "best_epoch": best_epoch, "select_metric": cfg.select_metric,
        "select_split": cfg.select_split, "train_rows": len(manifest.split("train")),
        "train_subset": subset, "class_balanced": cfg.class_balanced,
        "val": best_metrics, "history": history, "seconds": round(result.seconds, 1)})
    log(f"{method}: best epoch {best_epoch}, val MAE {best_metrics['mae_argmax']:.3f} (argmax) "
        f"{best_metrics['mae_expectation']:.3f} (expectation), accuracy {best_metrics['accuracy']:.3f}"
        f" [{result.seconds:.0f} s] -> {out_path}")
    return result


def _fit(params: Params, method: str, model: RankPromptModel, manifest, preprocess, device,
         writer: SummaryWriter, validate, out_path: Path, log) -> tuple[int, dict[str, Any]]:
    cfg = params.train
    weights = params.method(method).loss
    groups = model.parameter_groups(cfg.lr)
    if not groups:
        raise NumclipError(f"train.lr: every learning rate of method '{method}' is 0: nothing to train")
    augment = [transforms.RandomHorizontalFlip()] if cfg.hflip else []
    train_set = ImageRankDataset(manifest, "train", transforms.Compose([*augment, preprocess]))
    drop_last = len(train_set) > cfg.batch_size
    if cfg.class_balanced:
        sampler = class_balanced_sampler([r.label for r in train_set.rows], manifest.num_ranks, seed=cfg.seed)
        loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                            drop_last=drop_last)
    else:
        loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                            generator=torch.Generator().manual_seed(cfg.seed), drop_last=drop_last)
    steps_per_epoch = min(len(loader), cfg.max_steps_per_epoch or len(loader))
    optimizer = make_optimizer(params, groups)
    scheduler = make_scheduler(params, optimizer, steps_per_epoch)
    best_value, best_epoch, best_metrics = None, 0, {}
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        bar = tqdm(loader, total=steps_per_epoch, desc=f"{method} epoch {epoch}/{cfg.epochs}",
                   leave=False, disable=None)
        for i, (images, labels) in enumerate(bar):
            if i >= steps_per_epoch:
                break
            images, labels = images.to(device), torch.as_tensor(labels).to(device)
            with autocast(device):
                parts = model.forward_parts(images)
            loss, terms = training_loss(model, *parts, labels, weights)
            if not torch.isfinite(loss):
                raise NumclipError(f"{method}: loss became {loss.item()} at epoch {epoch} step {step}; "
                                   f"lower the learning rates in train.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            writer.add_scalar("train/loss", loss.item(), step)
            for name, value in terms.items():
                writer.add_scalar(f"train/{name}", value.item(), step)
            for group in optimizer.param_groups:
                writer.add_scalar(f"lr/{group['name']}", group["lr"], step)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        metrics = validate(epoch, step)
        value = metrics[cfg.select_metric]
        if _is_better(cfg.select_metric, value, best_value):
            best_value, best_epoch, best_metrics = value, epoch, metrics
            save_model(model, out_path, extra={"best_epoch": epoch})
        log(f"{method} epoch {epoch}: loss {loss.item():.3f}, val MAE {metrics['mae_argmax']:.3f}, "
            f"accuracy {metrics['accuracy']:.3f}")
    return best_epoch, best_metrics


def _hparams(params: Params, method: str) -> dict[str, Any]:
    m, t = params.method(method), params.train
    out = {"method": method, "learner": m.learner, "arch": params.model.arch,
           "pretrained": str(params.model.pretrained), "epochs": t.epochs, "batch_size": t.batch_size,
           "optimizer": t.optimizer, "schedule": t.schedule, "seed": t.seed, "num_ranks": params.data.num_ranks}
    if m.learner != "fixed":
        out.update(n_ctx=m.n_ctx, context_init=str(m.context_init), rank_position=m.rank_position,
                   interpolation=m.interpolation if m.learner == "interpolated" else "none",
                   num_base_ranks=m.num_base_ranks if m.learner == "interpolated" else 0)
        out.update({f"lr_{k}": v for k, v in t.lr.model_dump().items()})
    return out
