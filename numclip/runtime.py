"""What every stage after ingest starts from: a seeded process, the checked manifest, the backbone."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from numclip.config import ModelConfig, Params
from numclip.data import Manifest, read_manifest
from numclip.errors import NumclipError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_checked_manifest(params: Params) -> Manifest:
    manifest = read_manifest(params.data.manifest)
    if manifest.num_ranks != params.data.num_ranks:
        raise NumclipError(f"{params.data.manifest} was written for {manifest.num_ranks} ranks but "
                           f"data.num_ranks is {params.data.num_ranks}: re-run `numclip ingest`")
    return manifest


def backbone_config(params: Params) -> ModelConfig:
    """The backbone every stage after pretrain uses: the pretrain stage's output."""
    path = Path(params.pretrain.output)
    if not path.is_file():
        raise NumclipError(f"no pretrained backbone at {path} (pretrain.output): run `numclip pretrain` first")
    return ModelConfig(arch=params.model.arch, pretrained=str(path), device=params.model.device)
