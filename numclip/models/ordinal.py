"""The assembled model: CLIP image encoder + prompt learner + text tower + cosine head.

A saved model is one safetensors file: the full state dict plus JSON metadata (method, backbone,
rank words, preprocessing), so loading needs neither the params file nor any download.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from numclip import __version__
from numclip.atomic import atomic_path
from numclip.config import LearningRates, MethodConfig, ModelConfig, Params
from numclip.errors import NumclipError
from numclip.models.backbone import Backbone, create_backbone
from numclip.models.head import Impl, cosine_logits
from numclip.models.prompts import ContextPrompts, build_prompt_learner
from numclip.models.text import TextTower

FORMAT_VERSION = 1


class RankPromptModel(nn.Module):
    """logits = s * normalize(image_encoder(x)) @ normalize(text_tower(prompts))^T."""

    def __init__(self, backbone: Backbone, prompts: nn.Module, info: dict[str, Any]):
        super().__init__()
        self.clip = backbone.model
        self.prompts = prompts
        self.text = TextTower(backbone.model)
        self.tokenizer = backbone.tokenizer
        self.preprocess = backbone.preprocess
        self.info = info  # method, backbone and rank words: what a saved model needs to be rebuilt

    @property
    def num_ranks(self) -> int:
        return len(self.info["rank_words"])

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def prototypes(self) -> torch.Tensor:
        """Text features of the K rank prompts [K, D] (unnormalised)."""
        embeddings, pool_index = self.prompts(self.text)
        return self.text.encode(embeddings, pool_index)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images)

    def forward(self, images: torch.Tensor, prototypes: Optional[torch.Tensor] = None,
                impl: Impl = "auto") -> torch.Tensor:
        if prototypes is None:
            prototypes = self.prototypes()
        features = self.encode_image(images)
        return cosine_logits(features, prototypes.to(features.dtype), self.logit_scale(), impl=impl)

    def parameter_groups(self, lr: LearningRates) -> list[dict[str, Any]]:
        """Optimizer groups by role; a group with lr 0 is frozen (requires_grad False), not just idle."""
        groups: dict[str, list[nn.Parameter]] = {
            "image_encoder": list(self.clip.visual.parameters()),
            "text_encoder": self.text.parameters(),
            "logit_scale": [self.clip.logit_scale],
            "context": [], "rank": [],
        }
        if isinstance(self.prompts, ContextPrompts):
            groups["context"] = [self.prompts.context]
            groups["rank"] = [self.prompts.rank_embeds]
        for p in self.parameters():
            p.requires_grad_(False)
        out = []
        for name, params in groups.items():
            rate = getattr(lr, name)
            if rate > 0 and params:
                for p in params:
                    p.requires_grad_(True)
                out.append({"name": name, "params": params, "lr": rate})
        return out


def build_model(params: Params, method_name: str, backbone: Backbone) -> RankPromptModel:
    """A fresh model for `method_name` on `backbone`, initialised from params."""
    method = params.method(method_name)
    words = params.rank_words()
    prompts = build_prompt_learner(method, TextTower(backbone.model), backbone.tokenizer, words,
                                   params.task.zeroshot_template, seed=params.train.seed)
    info = {
        "format": FORMAT_VERSION,
        "numclip_version": __version__,
        "method": method_name,
        "method_config": method.model_dump(),
        "model": {"arch": backbone.arch, "pretrained": backbone.pretrained},
        "preprocess": backbone.preprocess_cfg,
        "rank_words": words,
        "zeroshot_template": params.task.zeroshot_template,
    }
    return RankPromptModel(backbone, prompts.to(next(backbone.model.parameters()).device), info)


def save_model(model: RankPromptModel, path: str | Path, extra: Optional[dict[str, Any]] = None) -> None:
    state = {k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.cpu().contiguous()
             for k, v in model.state_dict().items()}
    meta = dict(model.info, **(extra or {}))
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"numclip": json.dumps(meta)})


def read_model_info(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise NumclipError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get("numclip")
    except (SafetensorError, OSError) as e:
        raise NumclipError(f"{path} is not a safetensors model file: {e}") from None
    if meta is None:
        raise NumclipError(f"{path} is not a numclip model (no 'numclip' metadata)")
    return json.loads(meta)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> RankPromptModel:
    """Rebuild a saved model: architecture from metadata (no weights download), then its weights."""
    info = read_model_info(path)
    backbone = create_backbone(ModelConfig(arch=info["model"]["arch"]), device,
                               preprocess_cfg=info.get("preprocess"))
    backbone.pretrained = info["model"].get("pretrained")
    # initial values are overwritten by the saved state: do not depend on word files being present
    method = MethodConfig.model_validate(dict(info["method_config"], rank_words_file=None))
    prompts = build_prompt_learner(method, TextTower(backbone.model), backbone.tokenizer,
                                   info["rank_words"], info["zeroshot_template"])
    model = RankPromptModel(backbone, prompts.to(device), info)
    state = load_file(str(path), device=str(device))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise NumclipError(f"{path}: weights do not match the model they describe: {str(e)[:400]}") from None
    model.eval()
    return model
