"""The shared head: cosine logits against language prototypes, and prototype files.

`cosine_logits` (from `numclip.kernels`) is the one seam the fused kernel sits behind (`impl=`).
Prototypes depend only on the prompts, so after training they are saved once and inference needs no text encoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from numclip.core.atomic import atomic_path
from numclip.core.errors import NumclipError
from numclip.kernels import Impl, cosine_logits  # noqa: F401  the seam: Triton on CUDA, PyTorch otherwise


def save_prototypes(path: str | Path, prototypes: torch.Tensor, logit_scale: float,
                    metadata: dict[str, Any]) -> None:
    """Normalised prototypes [K, D] and the scale s, with JSON metadata (method, rank words, ...)."""
    tensors = {"prototypes": F.normalize(prototypes.detach().float(), dim=-1).cpu().contiguous(),
               "logit_scale": torch.tensor(float(logit_scale))}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"numclip": json.dumps(metadata)})


def load_prototypes(path: str | Path) -> tuple[torch.Tensor, float, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise NumclipError(f"prototype file not found: {path}")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("numclip", "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise NumclipError(f"{path} is not a numclip prototype file: {e}") from None
    if "prototypes" not in tensors or "logit_scale" not in tensors:
        raise NumclipError(f"{path} lacks 'prototypes' or 'logit_scale'")
    return tensors["prototypes"], float(tensors["logit_scale"]), meta
