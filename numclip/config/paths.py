"""Per-method output paths, derived from the params' folders (the one place that names those files)."""

from __future__ import annotations

from pathlib import Path

from numclip.config.schema import Params


def model_path(params: Params, method: str) -> Path:
    return Path(params.train.models_dir) / f"{method}.safetensors"


def head_path(params: Params, method: str) -> Path:
    return Path(params.evaluate.heads_dir) / f"{method}.safetensors"


def metrics_path(params: Params, method: str) -> Path:
    return Path(params.evaluate.metrics_dir) / f"{method}.json"
