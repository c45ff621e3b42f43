"""Shared fixtures: the tiny backbone is built once per session (random init, no download)."""

import pytest
import torch

from numclip.config import ModelConfig
from numclip.models.backbone import create_backbone


@pytest.fixture(scope="session")
def tiny_backbone():
    torch.manual_seed(0)
    return create_backbone(ModelConfig(arch="numclip-tiny"))
