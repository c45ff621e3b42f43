"""The training loop: per-group learning rates, AdamW/RAdam, cosine/multi-step schedule, bf16 autocast
on CUDA, checkpoint selection on the validation split, a progress bar and TensorBoard logging;
resumable after a kill (numclip.training.resume) and data-parallel under torchrun (numclip.training.distributed)."""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from torch.utils.tensorboard import SummaryWriter

from numclip.config import LossWeights, Params, SubsetConfig
from numclip.config.paths import model_path
from numclip.core.atomic import write_csv, write_json
from numclip.core.errors import NumclipError
from numclip.core.fingerprint import code_fingerprint
from numclip.core.progress import progress
from numclip.core.runtime import run_record, seed_everything
from numclip.data import ImageRankDataset, Manifest
from numclip.data.manifest import load_checked_manifest
from numclip.data.order import SeededFlip, ShardedBatches, epoch_order
from numclip.data.samplers import class_balanced_weights, distribution_shift, few_shot
from numclip.evaluation.diagnosis import TRAIN_HINT, learning_warnings, report
from numclip.evaluation.inference import autocast, collect_logits, inference_prototypes, metrics_from_logits
from numclip.evaluation.metrics import similarity_matrix
from numclip.evaluation.plots import similarity_figure
from numclip.models.backbone import backbone_config, create_backbone, resolve_device
from numclip.models.ordinal import RankPromptModel, build_model, save_model
from numclip.training.distributed import Dist, env_rank, init_distributed
from numclip.training.objective import head_outputs, training_class_weights, training_loss
from numclip.training.resume import Checkpoints, ResumeMode, TrainState, UnusableCheckpoint, set_aside
from numclip.training.schedules import make_optimizer, make_scheduler

# Train and val images, transformed, kept in memory (each set): the same tensors every epoch, decoded once.
IMAGE_CACHE_BYTES = 512 * 2**20
LOWER_IS_BETTER = {"mae_argmax": True, "mae_expectation": True, "accuracy": False}
VAL_KEYS = ("mae_argmax", "mae_expectation", "accuracy", "off_by_one")  # logged and kept per epoch


@dataclass
class TrainResult:
    method: str
    model_path: Path
    best_epoch: int
    val_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float


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


def _log_prototypes(writer: SummaryWriter, model: RankPromptModel, prototypes: torch.Tensor, step: int) -> None:
    sim = similarity_matrix(prototypes.float().cpu())
    words = model.card.prompt_words
    axis = "rank" if len(words) == model.num_ranks else "concept"
    writer.add_figure("prototypes/similarity", similarity_figure(sim, labels=words, axis=axis), global_step=step)


def _is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if LOWER_IS_BETTER[metric] else value > best


def train(params: Params, method: str, log: Callable[[str], None] = print,
          resume: ResumeMode = "never") -> TrainResult:
    """Train `method` on the manifest's train split, select on val, save the best model.

    Under torchrun every process runs this; rank 0 alone writes files and logs. `resume` (see
    numclip.training.resume): "never" starts afresh; "explicit" continues from a checkpoint if there is one and
    refuses one of another configuration or a damaged one; "auto" (the DVC stage) starts afresh instead of
    refusing, after setting a damaged checkpoint aside, so one bad file cannot fail every later `dvc repro`.
    """
    try:
        return _train(params, method, log, resume)
    except UnusableCheckpoint as e:
        if resume != "auto":
            raise
        if env_rank() == 0:  # torchrun: rank 0 alone touches the files
            aside = set_aside(e.path)
            log(f"{method}: {e.path} is unusable ({e.reason}): set aside as {aside}; starting afresh")
        return _train(params, method, log, "never")


def _train(params: Params, method: str, log: Callable[[str], None], resume: ResumeMode) -> TrainResult:
    start = time.time()
    cfg = params.train
    method_cfg = params.method(method)
    seed_everything(cfg.seed)
    device = resolve_device(params.model.device)
    ctx = init_distributed(device)
    device = ctx.device(device)
    manifest, subset = training_subset(load_checked_manifest(params), cfg.subset)
    backbone = create_backbone(backbone_config(params), device)
    model = build_model(params, method, backbone)
    val_set = ImageRankDataset(manifest, cfg.select_split, backbone.preprocess, IMAGE_CACHE_BYTES)
    out_path = model_path(params, method)
    say = log if ctx.is_main else _quiet
    trained = method_cfg.trains
    checkpoints = Checkpoints(params, method, code_fingerprint(__name__)) if trained else None
    state = checkpoints.start(resume, say) if checkpoints else TrainState()

    run_dir = Path(cfg.runs_dir) / method
    writer = _run_log(run_dir, state, ctx)

    def validate(epoch: int, step: int) -> dict[str, Any]:
        shard = Subset(val_set, ctx.shard(len(val_set)))
        prototypes = inference_prototypes(model, device)  # for the logits and the figure alike
        logits, targets = collect_logits(model, shard, params.evaluate.batch_size, device, prototypes)
        logits, targets = ctx.gather_interleaved(logits), ctx.gather_interleaved(targets)
        metrics = metrics_from_logits(model, logits, targets, params.evaluate.cs_k)
        for key in VAL_KEYS:
            writer.add_scalar(f"val/{key}", metrics[key], step)
        if ctx.is_main:
            _log_prototypes(writer, model, prototypes, step)
        return metrics

    if checkpoints:
        _fit(params, method, model, manifest, backbone.preprocess, device, ctx, writer, validate,
             checkpoints, state, say)
    else:  # zero-shot: nothing is trained, the model is saved as built
        state.best_metrics = validate(0, 0)
        state.history.append(_history_row(0, 0, None, state.best_metrics))
        if ctx.is_main:
            save_model(model, out_path, extra={"best_epoch": 0, "run": run_record(cfg.seed, device)})
    best_metrics, record = state.best_metrics, run_record(cfg.seed, device, ctx.world_size)
    writer.add_hparams(_hparams(params, method), {f"hparam/val_{k}": best_metrics[k]
                       for k in ("mae_argmax", "mae_expectation", "accuracy")}, run_name=".")
    writer.close()
    result = TrainResult(method, out_path, state.best_epoch, best_metrics, state.history, time.time() - start)
    if ctx.is_main:
        warnings = learning_warnings(best_metrics, model.num_ranks, f"{method} on {cfg.select_split}")
        history = state.history
        write_csv(Path(cfg.plots_dir) / f"{method}.csv", list(history[0]), [list(h.values()) for h in history])
        write_json(Path(cfg.metrics_dir) / f"{method}.json", {
            "method": method, "best_epoch": state.best_epoch, "select_metric": cfg.select_metric,
            "select_split": cfg.select_split, "train_rows": len(manifest.split("train")),
            "train_subset": subset, "class_balanced": cfg.class_balanced,
            "val": best_metrics, "warnings": warnings, "history": history, "run": record,
            "seconds": round(result.seconds, 1)})
        log(f"{method}: best epoch {state.best_epoch}, val MAE {best_metrics['mae_argmax']:.3f} (argmax) "
            f"{best_metrics['mae_expectation']:.3f} (expectation), accuracy {best_metrics['accuracy']:.3f}"
            f" [{result.seconds:.0f} s] -> {out_path}")
        report(warnings, TRAIN_HINT)
    ctx.barrier()  # no process leaves (and tears down the group) while rank 0 still writes
    return result


def _quiet(message: str) -> None:
    """The log of ranks other than 0: rank 0 speaks for all."""


class _NoLog:
    """TensorBoard for ranks other than 0: every call does nothing."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def _run_log(run_dir: Path, state: TrainState, ctx: Dist) -> SummaryWriter | _NoLog:
    """The TensorBoard run. Fresh: an empty folder. Resumed: the killed run's events up to the
    checkpoint are kept (later ones purged), or replayed from the checkpoint if the folder is gone
    (DVC removes a stage's outputs before running it)."""
    if not ctx.is_main:
        return _NoLog()
    if state.step == 0:
        shutil.rmtree(run_dir, ignore_errors=True)  # a re-run replaces its logs instead of mixing with them
        return SummaryWriter(str(run_dir))
    if run_dir.is_dir() and any(run_dir.iterdir()):
        return SummaryWriter(str(run_dir), purge_step=state.step + 1)
    writer = SummaryWriter(str(run_dir))
    for step, loss in enumerate(state.losses, start=1):
        writer.add_scalar("train/loss", loss, step)
    for row in state.history:
        for key in VAL_KEYS:
            writer.add_scalar(f"val/{key}", row[key], row["step"])
    return writer


def _history_row(epoch: int, step: int, train_loss: Optional[float], metrics: dict[str, Any]) -> dict[str, Any]:
    return {"epoch": epoch, "step": step, "train_loss": train_loss,
            **{k: metrics[k] for k in VAL_KEYS}}


class _Encoders(nn.Module):
    """(image features, prototypes): the pass through both towers, the part DistributedDataParallel
    wraps; logits are taken after the features are gathered into the global batch."""

    def __init__(self, model: RankPromptModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_image(images), self.model.prototypes()


def _batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _parallel(model: RankPromptModel, ctx: Dist, device: torch.device, frozen_bn: bool, log) -> nn.Module:
    """The encoders, wrapped in DistributedDataParallel under torchrun. BatchNorm (ResNet image
    encoders) is synchronised across GPUs; gloo has no SyncBatchNorm, so on CPU each process
    normalises with its own part of the batch unless train.freeze_batchnorm is set."""
    encoders = _Encoders(model)
    if not ctx.enabled:
        return encoders
    if _batchnorm_layers(model) and not frozen_bn:
        if device.type == "cuda":
            encoders = nn.SyncBatchNorm.convert_sync_batchnorm(encoders)
        else:
            log("note: BatchNorm statistics are per process on CPU (no SyncBatchNorm with gloo); set "
                "train.freeze_batchnorm: true for results that match one process")
    return DistributedDataParallel(encoders, device_ids=[device.index] if device.type == "cuda" else None)


def training_step(model: RankPromptModel, optimizer: torch.optim.Optimizer,
                  scheduler: torch.optim.lr_scheduler.LRScheduler, images: torch.Tensor, labels: torch.Tensor,
                  weights: LossWeights, encoders: Optional[nn.Module] = None, ctx: Optional[Dist] = None,
                  name: str = "training", at: str = "this step", class_weights: Optional[torch.Tensor] = None,
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step on a batch already on the device: both towers under autocast, the head
    and the enabled loss terms (numclip.training.objective), backward, the optimizer and the schedule.

    `encoders` is what `_parallel` returns (default: the model's own towers) and `ctx` the process
    group (default: one process); under torchrun the features and labels are gathered into the global
    batch before the head. A non-finite loss stops the run before any update, with a NumclipError
    naming `name` and `at`. `class_weights`: see `training_loss`. Returns (total loss, each enabled term).
    `_fit` and benchmarks/step_throughput.py both run it, so the benchmark times the training code itself."""
    encoders = _Encoders(model) if encoders is None else encoders
    ctx = Dist() if ctx is None else ctx
    with autocast(images.device):
        features, prototypes = encoders(images)
        features, labels = ctx.gather_batch(features), ctx.gather_batch(labels)
        logits, fused = head_outputs(model, features, prototypes, labels, weights)
    loss, terms = training_loss(model, features, prototypes, logits, labels, weights, fused, class_weights)
    if not torch.isfinite(loss):
        raise NumclipError(f"{name}: loss became {loss.item()} at {at}; lower the learning rates in train.lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss, terms


def _fit(params: Params, method: str, model: RankPromptModel, manifest, preprocess, device,
         ctx: Dist, writer, validate, checkpoints: Checkpoints, state: TrainState, log) -> None:
    cfg = params.train
    weights = params.method(method).loss
    groups = model.parameter_groups(cfg.lr)
    if not groups:
        raise NumclipError(f"train.lr: every learning rate of method '{method}' is 0: nothing to train")
    if cfg.batch_size % ctx.world_size:
        raise NumclipError(f"train.batch_size {cfg.batch_size} is the global batch: it must divide by the "
                           f"{ctx.world_size} processes torchrun started")
    train_set = SeededFlip(ImageRankDataset(manifest, "train", preprocess, IMAGE_CACHE_BYTES), cfg.seed, cfg.hflip)
    labels = [r.label for r in train_set.base.rows]
    draw_weights = class_balanced_weights(labels, manifest.num_ranks) if cfg.class_balanced else None
    class_weights = training_class_weights(model, labels, weights, device)  # None unless loss.class_weights
    n = len(train_set)
    full_steps = n // cfg.batch_size if n > cfg.batch_size else 1  # full batches only, unless one is all
    steps_per_epoch = min(full_steps, cfg.max_steps_per_epoch or full_steps)
    optimizer = make_optimizer(params, groups)
    scheduler = make_scheduler(params, optimizer, steps_per_epoch)
    checkpoints.restore(state, model, optimizer, scheduler)
    encoders = _parallel(model, ctx, device, cfg.freeze_batchnorm, log)
    for epoch in range(state.epochs_done + 1, cfg.epochs + 1):
        model.train()
        if cfg.freeze_batchnorm:
            for layer in _batchnorm_layers(model):
                layer.eval()
        train_set.epoch = epoch
        first = state.step - (epoch - 1) * steps_per_epoch  # > 0 when resuming inside this epoch
        batches = ShardedBatches(epoch_order(n, cfg.seed, epoch, draw_weights), cfg.batch_size,
                                 steps_per_epoch, ctx.rank, ctx.world_size, first)
        loader = DataLoader(train_set, batch_sampler=batches, num_workers=cfg.num_workers)
        bar = progress(loader, f"{method} epoch {epoch}/{cfg.epochs}", len(batches), ctx.is_main)
        for images, labels in bar:
            images, labels = images.to(device), torch.as_tensor(labels).to(device)
            loss, terms = training_step(model, optimizer, scheduler, images, labels, weights, encoders, ctx,
                                        name=method, at=f"epoch {epoch} step {state.step}", class_weights=class_weights)
            state.step += 1
            state.losses.append(loss.item())  # the global batch's: the same on every rank
            writer.add_scalar("train/loss", loss.item(), state.step)
            for name, value in terms.items():
                writer.add_scalar(f"train/{name}", value.item(), state.step)
            for group in optimizer.param_groups:
                writer.add_scalar(f"lr/{group['name']}", group["lr"], state.step)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0 \
                    and state.step % steps_per_epoch:  # an epoch's last step is saved after validation
                checkpoints.save(state, model, optimizer, scheduler, ctx)
        metrics = validate(epoch, state.step)
        epoch_losses = state.losses[(epoch - 1) * steps_per_epoch:]
        state.history.append(_history_row(epoch, state.step, sum(epoch_losses) / len(epoch_losses), metrics))
        state.epochs_done = epoch
        value = metrics[cfg.select_metric]
        if _is_better(cfg.select_metric, value, state.best_value):
            state.best_value, state.best_epoch, state.best_metrics = value, epoch, metrics
            if ctx.is_main:
                save_model(model, checkpoints.best, extra={"best_epoch": epoch, "run": run_record(
                    cfg.seed, device, ctx.world_size)})
        checkpoints.save(state, model, optimizer, scheduler, ctx)
        log(f"{method} epoch {epoch}: loss {state.history[-1]['train_loss']:.3f}, val MAE "
            f"{metrics['mae_argmax']:.3f}, accuracy {metrics['accuracy']:.3f}")
    if ctx.is_main:
        checkpoints.finish(model_path(params, method))


def _hparams(params: Params, method: str) -> dict[str, Any]:
    m, t = params.method(method), params.train
    out = {"method": method, "learner": m.learner, "arch": params.model.arch,
           "pretrained": str(params.model.pretrained), "epochs": t.epochs, "batch_size": t.batch_size,
           "optimizer": t.optimizer, "schedule": t.schedule, "seed": t.seed, "num_ranks": params.data.num_ranks}
    out.update({k: v for k, v in m.summary().items() if k not in out})
    if m.trains:
        out.update({f"lr_{k}": v for k, v in t.lr.model_dump().items()})
    return out
