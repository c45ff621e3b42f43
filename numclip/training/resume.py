"""Resuming a killed training run exactly: its state (position, best so far, history), where its
checkpoints live, and when a checkpoint may continue a run (same configuration, same inputs)."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import torch

from numclip.config import Params
from numclip.core.atomic import atomic_path
from numclip.core.digests import file_digest
from numclip.core.errors import NumclipError
from numclip.core.runtime import rng_state, set_rng_state
from numclip.core.text import one_line
from numclip.training.checkpoint import load_checkpoint, save_checkpoint
from numclip.training.distributed import Dist

# never: start afresh. explicit (`numclip train --resume`): continue from the checkpoint if there is
# one, refuse one of another configuration. auto (the DVC stage): continue, or start afresh if the
# configuration changed.
ResumeMode = Literal["never", "explicit", "auto"]
# what may differ between a killed run and its continuation: where things go, how often to save
_NOT_IDENTITY = {"models_dir", "runs_dir", "metrics_dir", "plots_dir", "checkpoints_dir",
                 "checkpoint_every_steps", "num_workers"}


@dataclass
class TrainState:
    """Where a run is: global steps and whole (validated) epochs done, the best epoch so far, the
    per-epoch history and the per-step losses (to replay TensorBoard if its folder was removed)."""

    step: int = 0
    epochs_done: int = 0
    best_value: Optional[float] = None
    best_epoch: int = 0
    best_metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def run_identity(params: Params, method: str, code: str) -> dict[str, Any]:
    """Everything a run's result depends on: its params, the bytes of its manifest and backbone, and
    the fingerprint of the code that trains (`code`), so a code change never resumes an older run."""
    train = {k: v for k, v in params.train.model_dump().items() if k not in _NOT_IDENTITY}
    return {"method": method, "method_config": params.method(method).model_dump(), "train": train,
            "task": params.task.model_dump(), "model": params.model.model_dump(),
            "num_ranks": params.data.num_ranks, "manifest_sha256": file_digest(params.data.manifest),
            "backbone_sha256": file_digest(params.pretrain.output), "code": code}


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


_SAVED_KEYS = ("identity", "train_state", "model", "optimizer", "scheduler", "rng")


class UnusableCheckpoint(NumclipError):
    """A checkpoint that is damaged or does not fit the model: with `--resume` an error, with
    `--resume auto` set aside so the run starts afresh."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"the checkpoint {path} is unusable: {reason}; delete it, or run with "
                         "--resume auto to set it aside and start afresh")
        self.path, self.reason = path, reason


def set_aside(checkpoint: Path) -> Path:
    """Move an unusable checkpoint's folder (its state and best model) out of the way, kept for
    inspection, so the next run starts afresh instead of failing on it again."""
    folder = checkpoint.parent
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = folder.with_name(f"{folder.name}.unusable-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = folder.with_name(f"{folder.name}.unusable-{stamp}-{n}")
    folder.rename(aside)
    return aside


def _train_state(saved: Any) -> TrainState:
    """The saved position, its counters checked (a tampered one would fail deep in the loop)."""
    state = TrainState(**saved)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (state.step, state.epochs_done)):
        raise NumclipError(f"its position (step {state.step!r}, epochs_done {state.epochs_done!r}) is not "
                           "two counts")
    if not isinstance(state.history, list) or not isinstance(state.losses, list):
        raise NumclipError("its history or losses are not lists")
    return state


def _check_moments(optimizer: torch.optim.Optimizer) -> None:
    """Every optimizer moment has its parameter's shape (load_state_dict does not check)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != p.shape:
                    raise ValueError(f"optimizer state {name} has shape {list(value.shape)}, "
                                     f"its parameter {list(p.shape)}")


class Checkpoints:
    """checkpoints_dir/<method>/: `state.safetensors` (the whole training state) and
    `best.safetensors` (the best model so far). Removed once the run has finished."""

    def __init__(self, params: Params, method: str, code: str):
        self.dir = Path(params.train.checkpoints_dir) / method
        self.path = self.dir / "state.safetensors"
        self.best = self.dir / "best.safetensors"
        self.method = method
        self.identity = run_identity(params, method, code)
        self._loaded: Optional[dict[str, Any]] = None

    def start(self, mode: ResumeMode, log: Callable[[str], None]) -> TrainState:
        """The state to start from: fresh, or the checkpoint's when `mode` allows and it matches.
        UnusableCheckpoint when the file is damaged (see `set_aside`)."""
        if mode == "never":
            return TrainState()
        if not self.path.is_file():
            log(f"{self.method}: no checkpoint at {self.path}: starting from the beginning")
            return TrainState()
        try:
            saved = load_checkpoint(self.path)
            missing = [k for k in _SAVED_KEYS if k not in saved]
            if missing:
                raise NumclipError(f"it lacks {', '.join(missing)}")
            changed = _differences(saved["identity"], self.identity)
            state = None if changed else _train_state(saved["train_state"])
        except (NumclipError, TypeError) as e:
            raise UnusableCheckpoint(self.path, str(e)) from None
        if changed:
            what = ", ".join(changed[:6])
            if mode == "explicit":
                raise NumclipError(f"--resume: the checkpoint {self.path} is of another run (differs in "
                                   f"{what}); run without --resume to start afresh")
            log(f"{self.method}: checkpoint {self.path} is of another run (differs in {what}): starting afresh")
            return TrainState()
        self._loaded = saved
        log(f"{self.method}: resuming from {self.path} at step {state.step} "
            f"({state.epochs_done} epochs done)")
        return state

    def restore(self, state: TrainState, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: Any) -> None:
        """Put the loaded checkpoint's weights, optimizer, schedule and RNG states back in place;
        UnusableCheckpoint when they do not fit this model (the model is then half restored: rebuild it)."""
        if self._loaded is None:
            return
        device = next(model.parameters()).device
        try:
            model.load_state_dict({k: v.to(device) for k, v in self._loaded["model"].items()})
            optimizer.load_state_dict(self._loaded["optimizer"])
            _check_moments(optimizer)
            scheduler.load_state_dict(self._loaded["scheduler"])
            set_rng_state(self._loaded["rng"])
        except torch.cuda.OutOfMemoryError:
            raise  # the device is full: the checkpoint is not at fault
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise UnusableCheckpoint(self.path, one_line(e, 300)) from None
        finally:
            self._loaded = None

    def save(self, state: TrainState, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any, ctx: Dist) -> None:
        if not ctx.is_main:
            return
        save_checkpoint(self.path, {
            "identity": self.identity, "train_state": asdict(state), "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()})

    def finish(self, out_path: Path) -> None:
        """Publish the best model and drop the checkpoints: a finished run has nothing to resume."""
        with atomic_path(out_path) as tmp:
            shutil.copyfile(self.best, tmp)
        shutil.rmtree(self.dir, ignore_errors=True)
