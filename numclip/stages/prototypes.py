"""The prototypes stage: text prototypes of every method's *initial* prompts, cached by content.

A re-run re-encodes only the methods whose key changed (numclip.models.prototype_cache: backbone,
prompt settings, words, template, tokenizer and the prompt code). Evaluation reads them to report
how training changed the prototypes' ordinality.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from numclip.config import Params
from numclip.core.atomic import atomic_path, write_json
from numclip.core.digests import file_digest
from numclip.core.runtime import seed_everything
from numclip.evaluation.metrics import prototype_ordinality
from numclip.models.backbone import backbone_config, create_backbone, resolve_device
from numclip.models.ordinal import build_model
from numclip.models.prototype_cache import prompt_key, read_cache


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


