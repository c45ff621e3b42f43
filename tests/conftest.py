"""Shared fixtures: the tiny backbone is built once per session (random init, no download).

Triton kernels run under the interpreter on CPU (TRITON_INTERPRET must be set before triton is
imported); NUMCLIP_TEST_DEVICE=cuda runs the kernel tests natively on a GPU instead.
"""

import os

if os.environ.get("NUMCLIP_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from numclip.config import ModelConfig  # noqa: E402
from numclip.models.backbone import create_backbone  # noqa: E402


@pytest.fixture(scope="session")
def tiny_backbone():
    torch.manual_seed(0)
    return create_backbone(ModelConfig(arch="numclip-tiny"))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def copy_pipeline(dst) -> None:
    """The project's dvc.yaml and params.yaml in `dst`: what `numclip run` needs to find the stages."""
    import shutil

    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(os.path.join(REPO, name), os.path.join(dst, name))
