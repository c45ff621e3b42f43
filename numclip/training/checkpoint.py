"""Training checkpoints as safetensors: nested state (model, optimizer, scheduler, sampler position,
RNG states, history) whose tensors are stored as tensors and the rest as JSON metadata, so loading
one never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from numclip.core.atomic import atomic_path
from numclip.core.errors import NumclipError
from numclip.core.metadata import json_object, open_safetensors

FORMAT = "numclip-checkpoint-1"
_TENSOR = "__tensor__"
STATE_MAX_BYTES = 100 * 2**20  # the per-step loss history grows with the run; safetensors caps headers here


def _flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """`obj` with every tensor moved into `tensors` under its path and replaced by a reference."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {_TENSOR: prefix}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"checkpoint keys must be str or int at {prefix}")
        # stored as [key, value] pairs: JSON objects would turn the optimizer's int keys into strings
        return {"__items__": [[k, _flatten(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (at {prefix})")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if "__items__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__items__"]}
        items = [_unflatten(v, tensors) for v in obj["__list__"]]
        return tuple(items) if obj["tuple"] else items
    return obj


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` atomically: a kill leaves the previous checkpoint or this one."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors, "s")
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "state": json.dumps(skeleton)})


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state `save_checkpoint` wrote; NumclipError naming the file if it is not one or is damaged."""
    with open_safetensors(path, "training checkpoint") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise NumclipError(f"{path} is not a numclip training checkpoint")
        skeleton = json_object(meta.get("state"), str(path), "state record", max_bytes=STATE_MAX_BYTES)
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    try:
        return _unflatten(skeleton, tensors)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise NumclipError(f"{path}: its state record is damaged ({type(e).__name__}: {e})") from None
