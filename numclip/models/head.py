"""The shared head: cosine logits against language prototypes, and prototype files.

`cosine_logits` is the one seam a fused kernel replaces (`impl=`). Prototypes depend only on the
prompts, so after training they are saved once and inference needs no text encoder.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from numclip.atomic import atomic_path
from numclip.errors import NumclipError

Impl = Literal["auto", "torch", "compile"]
EPS = 1e-12


def cosine_logits_torch(features: torch.Tensor, prototypes: torch.Tensor,
                        logit_scale: torch.Tensor | float) -> torch.Tensor:
    """s * normalize(features) @ normalize(prototypes).T, in the inputs' dtype."""
    return logit_scale * F.normalize(features, dim=-1, eps=EPS) @ F.normalize(prototypes, dim=-1, eps=EPS).T


@lru_cache(maxsize=1)
def _compiled():
    return torch.compile(cosine_logits_torch, dynamic=True)


def cosine_logits(features: torch.Tensor, prototypes: torch.Tensor, logit_scale: torch.Tensor | float,
                  *, impl: Impl = "auto") -> torch.Tensor:
    """Logits [B, K] of image features [B, D] against prototypes [K, D], scaled by s = exp(logit_scale).

    impl: "torch" (eager), "compile" (torch.compile of the eager function), "auto" (eager for now).
    """
    if features.shape[-1] != prototypes.shape[-1]:
        raise ValueError(f"feature width {features.shape[-1]} != prototype width {prototypes.shape[-1]}")
    if impl in ("auto", "torch"):
        return cosine_logits_torch(features, prototypes, logit_scale)
    if impl == "compile":
        return _compiled()(features, prototypes, logit_scale)
    raise ValueError(f"impl must be 'auto', 'torch' or 'compile', got '{impl}'")


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
