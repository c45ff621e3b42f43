"""The prototypes cache: each method's initial text prototypes keyed by what determines them.

Each entry is keyed by a hash of the backbone weights, the prompt settings, the rank words, the
template, the tokenizer and the code that builds prompts, so a re-run re-encodes only the methods
whose prompts changed. Evaluation reads it to report how training changed the prototypes' ordinality.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from numclip.config import Params, read_word_file
from numclip.core.errors import NumclipError
from numclip.core.fingerprint import code_fingerprint
from numclip.core.metadata import json_object, safetensors_metadata

PROMPT_CODE = "numclip.models.ordinal"  # builds every method's prompt learner and head
PROMPT_KEYS_IGNORED = {"loss"}  # settings that do not change the initial prompts


def prompt_key(params: Params, method: str, backbone_digest: str) -> str:
    """Content hash of everything that determines the method's initial prototypes."""
    cfg = {k: v for k, v in params.method(method).model_dump().items() if k not in PROMPT_KEYS_IGNORED}
    if cfg.get("rank_words_file"):
        cfg["rank_words_file"] = read_word_file(cfg["rank_words_file"])
    blob = json.dumps({"backbone": backbone_digest, "prompts": cfg, "words": params.rank_words(),
                       "template": params.task.template, "tokenizer": params.model.arch,
                       "seed": params.train.seed, "code": code_fingerprint(PROMPT_CODE)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_cache(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Prototypes and their keys from an earlier run ({} when there is none or it is unreadable)."""
    if not Path(path).is_file():
        return {}, {}
    try:
        keys = json_object(safetensors_metadata(path, "prototype cache").get("numclip_keys", "{}"),
                           str(path), "keys")
        return load_file(str(path)), keys
    except (NumclipError, SafetensorError, OSError):
        return {}, {}


def initial_prototypes(params: Params, method: str) -> Optional[torch.Tensor]:
    tensors, _ = read_cache(params.prototypes.output)
    return tensors.get(method)
