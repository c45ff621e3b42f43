"""The prototypes stage: text prototypes of every method's *initial* prompts, cached by content.

Each entry is keyed by a hash of the backbone weights, the prompt settings, the rank words, the
template and the tokenizer, so a re-run re-encodes only the methods whose prompts changed. Evaluation
reads them to report how training changed the prototypes' ordinality.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from numclip.atomic import atomic_path, write_json
from numclip.config import Params
from numclip.metrics import prototype_ordinality
from numclip.models.backbone import create_backbone, resolve_device
from numclip.models.ordinal import build_model
from numclip.runtime import backbone_config, seed_everything

PROMPT_KEYS_IGNORED = {"loss"}  # settings that do not change the initial prompts


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prompt_key(params: Params, method: str, backbone_digest: str) -> str:
    """Content hash of everything that determines the method's initial prototypes."""
    cfg = {k: v for k, v in params.method(method).model_dump().items() if k not in PROMPT_KEYS_IGNORED}
    if cfg.get("rank_words_file"):
        cfg["rank_words_file"] = Path(cfg["rank_words_file"]).read_text(encoding="utf-8")
    blob = json.dumps({"backbone": backbone_digest, "prompts": cfg, "words": params.rank_words(),
                       "template": params.task.template, "tokenizer": params.model.arch,
                       "seed": params.train.seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_cache(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Prototypes and their keys from an earlier run ({} when there is none or it is unreadable)."""
    if not Path(path).is_file():
        return {}, {}
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = json.loads((f.metadata() or {}).get("numclip_keys", "{}"))
        return load_file(str(path)), keys
    except (SafetensorError, OSError, json.JSONDecodeError):
        return {}, {}


def compute_prototypes(params: Params, log: Callable[[str], None] = print) -> dict[str, Any]:
    cfg = params.prototypes
    backbone_cfg = backbone_config(params)
    digest = file_digest(backbone_cfg.pretrained)
    cached, cached_keys = read_cache(cfg.output)
    tensors, keys, report = {}, {}, {}
    backbone = None
    for method in params.methods:
        key = prompt_key(params, method, digest)
        reused = cached_keys.get(method) == key and method in cached
        if reused:
            tensors[method] = cached[method]
        else:
            if backbone is None:
                backbone = create_backbone(backbone_cfg, resolve_device(params.model.device))
            seed_everything(params.train.seed)
            with torch.no_grad():
                tensors[method] = build_model(params, method, backbone).prototypes().float().cpu().contiguous()
        keys[method] = key
        report[method] = {"reused": reused, "ordinality": prototype_ordinality(tensors[method])["overall"]}
    with atomic_path(cfg.output) as tmp:
        save_file(tensors, str(tmp), metadata={"numclip_keys": json.dumps(keys)})
    write_json(cfg.metrics, report)
    encoded = [m for m, r in report.items() if not r["reused"]]
    log(f"prototypes: encoded {', '.join(encoded) or 'none'}; reused "
        f"{', '.join(m for m in report if m not in encoded) or 'none'} -> {cfg.output}")
    return report


def initial_prototypes(params: Params, method: str) -> Optional[torch.Tensor]:
    tensors, _ = read_cache(params.prototypes.output)
    return tensors.get(method)
