"""The shared head: cosine logits against language prototypes, and prototype files.

`cosine_logits` and `cosine_ranking_cross_entropy` (from `numclip.kernels`) are the seam the fused kernels sit
behind (`impl=`); `head_logits` adds the linear probe's W f + b.
Prototypes depend only on the prompts, so after training they are saved once and inference needs no text encoder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from numclip.core.atomic import atomic_path
from numclip.core.errors import NumclipError
from numclip.core.metadata import json_object, open_safetensors
from numclip.core.text import one_line
from numclip.kernels import Impl, cosine_logits, cosine_ranking_cross_entropy  # noqa: F401  the seam (kernels)


def head_logits(features: torch.Tensor, prototypes: torch.Tensor, scale: float | torch.Tensor,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The head's logits: s cos(f, w_k) (every language head, the cosine probe), or W f + b when the head
    has a bias (the linear probe)."""
    if bias is None:
        return cosine_logits(features, prototypes.to(features.dtype), scale)
    return F.linear(features, prototypes.to(features.dtype), bias.to(features.dtype))


@dataclass
class ExportedHead:
    """What inference needs of a trained head: the class vectors [K, D], the scale, the linear probe's bias,
    and the metadata (method, rank words, preprocessing, the conformal threshold)."""

    prototypes: torch.Tensor
    scale: float
    bias: Optional[torch.Tensor]
    metadata: dict[str, Any]
    threshold: Optional[float] = None  # the conformal threshold (inf: every interval is all ranks); None: none


def _conformal_threshold(meta: dict[str, Any], path: str | Path) -> Optional[float]:
    """The threshold `numclip evaluate` recorded (null there: calibration could not reach 1 - alpha with so
    few val images, so every interval is all ranks); None for a head without one."""
    if "conformal" not in meta:
        return None
    record = meta["conformal"]
    if not isinstance(record, dict) or "threshold" not in record:
        got = f"conformal = {one_line(repr(record))[:80]}"
    elif (value := record["threshold"]) is None:
        return math.inf
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    else:
        got = one_line(repr(value))[:80]
    raise NumclipError(f"{path}: head record key conformal.threshold must be a finite number or null, "
                       f"got {got} (export the head again with `numclip evaluate`)")


def save_prototypes(path: str | Path, prototypes: torch.Tensor, logit_scale: float,
                    metadata: dict[str, Any], bias: Optional[torch.Tensor] = None) -> None:
    """The class vectors [K, D] (normalised, for a cosine head; as they are, with the bias, for a linear one),
    the scale s, and JSON metadata (method, rank words, ...)."""
    vectors = prototypes.detach().float()
    tensors = {"prototypes": (F.normalize(vectors, dim=-1) if bias is None else vectors).cpu().contiguous(),
               "logit_scale": torch.tensor(float(logit_scale))}
    if bias is not None:
        tensors["bias"] = bias.detach().float().cpu().contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"numclip": json.dumps(metadata)})


def load_head(path: str | Path) -> ExportedHead:
    """An exported head; NumclipError naming the file when it is not one, or holds tensors of the wrong
    shape or non-finite values."""
    what = "prototype (head) file"
    with open_safetensors(path, what) as f:
        meta = json_object((f.metadata() or {}).get("numclip", "{}"), str(path), "head record ('numclip' metadata)")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    prototypes, scale, bias = tensors.get("prototypes"), tensors.get("logit_scale"), tensors.get("bias")
    if prototypes is None or scale is None:
        raise NumclipError(f"{path} lacks 'prototypes' or 'logit_scale': export it again with `numclip evaluate`")
    if prototypes.ndim != 2 or min(prototypes.shape) == 0 or not prototypes.is_floating_point() or scale.numel() != 1:
        raise NumclipError(f"{path}: prototypes must be a non-empty float matrix [ranks, width] and logit_scale "
                           f"one number; got {list(prototypes.shape)} {prototypes.dtype} and {list(scale.shape)}")
    if bias is not None and (bias.shape != prototypes.shape[:1] or not bias.is_floating_point()):
        raise NumclipError(f"{path}: bias must be a float vector of {prototypes.shape[0]} entries, "
                           f"got {list(bias.shape)} {bias.dtype}")
    if not all(torch.isfinite(t).all() for t in (prototypes, scale) + (() if bias is None else (bias,))):
        raise NumclipError(f"{path}: prototypes, logit_scale or bias hold NaN or infinite values")
    return ExportedHead(prototypes.float(), float(scale), None if bias is None else bias.float(), meta,
                        _conformal_threshold(meta, path))
