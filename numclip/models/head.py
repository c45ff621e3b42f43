"""The shared head: cosine logits against language prototypes, and prototype files.

`cosine_logits` and `cosine_ranking_cross_entropy` (from `numclip.kernels`) are the seam the fused kernels sit
behind (`impl=`).
Prototypes depend only on the prompts, so after training they are saved once and inference needs no text encoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from numclip.core.atomic import atomic_path
from numclip.core.errors import NumclipError
from numclip.core.metadata import json_object, open_safetensors
from numclip.kernels import Impl, cosine_logits, cosine_ranking_cross_entropy  # noqa: F401  the seam (kernels)


def save_prototypes(path: str | Path, prototypes: torch.Tensor, logit_scale: float,
                    metadata: dict[str, Any]) -> None:
    """Normalised prototypes [K, D] and the scale s, with JSON metadata (method, rank words, ...)."""
    tensors = {"prototypes": F.normalize(prototypes.detach().float(), dim=-1).cpu().contiguous(),
               "logit_scale": torch.tensor(float(logit_scale))}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"numclip": json.dumps(metadata)})


def load_prototypes(path: str | Path) -> tuple[torch.Tensor, float, dict[str, Any]]:
    """Prototypes [K, D], the scale and the metadata of a head file; NumclipError naming the file
    when it is not one, or holds tensors of the wrong shape or non-finite values."""
    what = "prototype (head) file"
    with open_safetensors(path, what) as f:
        meta = json_object((f.metadata() or {}).get("numclip", "{}"), str(path), "head record ('numclip' metadata)")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    prototypes, scale = tensors.get("prototypes"), tensors.get("logit_scale")
    if prototypes is None or scale is None:
        raise NumclipError(f"{path} lacks 'prototypes' or 'logit_scale': export it again with `numclip evaluate`")
    if prototypes.ndim != 2 or min(prototypes.shape) == 0 or not prototypes.is_floating_point() or scale.numel() != 1:
        raise NumclipError(f"{path}: prototypes must be a non-empty float matrix [ranks, width] and logit_scale "
                           f"one number; got {list(prototypes.shape)} {prototypes.dtype} and {list(scale.shape)}")
    if not (torch.isfinite(prototypes).all() and torch.isfinite(scale).all()):
        raise NumclipError(f"{path}: prototypes or logit_scale hold NaN or infinite values")
    return prototypes.float(), float(scale), meta
