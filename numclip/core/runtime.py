"""What every stage after ingest starts from: a seeded process, the checked manifest, the backbone."""

from __future__ import annotations

import platform
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG's state (Python, NumPy, torch CPU and CUDA), storable in a checkpoint."""
    np_state = np.random.get_state(legacy=False)
    return {"python": random.getstate(),
            "numpy": {"key": np_state["state"]["key"].tolist(), "pos": np_state["state"]["pos"],
                      "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": np.array(n["key"], dtype=np.uint32),
                         "pos": n["pos"]}, "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_record(seed: int, device: torch.device, world_size: int = 1) -> dict[str, Any]:
    """What a run's numbers depend on besides its params: recorded with every run's metrics."""
    import open_clip

    from numclip import __version__

    return {"seed": seed, "numclip": __version__, "torch": torch.__version__,
            "open_clip": open_clip.__version__, "python": platform.python_version(),
            "device": str(device), "world_size": world_size}


