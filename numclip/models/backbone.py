"""open_clip backbone factory: any open_clip architecture, a pretrained tag or a local weights file.

The tiny architecture `numclip-tiny` ships as a JSON config in `numclip/models/configs/` so that the
whole pipeline runs on a 2-core CPU.
"""

from __future__ import annotations

import json
import logging
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import open_clip
import torch
from pydantic import ValidationError
from torch import nn

from numclip.config import ModelConfig, Params
from numclip.core.errors import NumclipError
from numclip.core.metadata import first_problem, json_object, safetensors_metadata
from numclip.models.card import PreprocessCard

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


@dataclass
class Backbone:
    """An open_clip model with the tokenizer and image transforms that belong to it."""

    model: nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    preprocess: Callable  # eval transform: the model's own resize, crop, mean and std
    arch: str
    pretrained: Optional[str]

    @property
    def preprocess_cfg(self) -> dict:
        return dict(self.model.visual.preprocess_cfg)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise NumclipError(f"model.device: '{name}' is not a device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NumclipError(f"model.device is '{name}' but CUDA is not available here")
    return device


def is_weights_file(pretrained: Optional[str]) -> bool:
    return pretrained is not None and (
        Path(pretrained).suffix.lower() in WEIGHT_SUFFIXES or Path(pretrained).is_file())


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict without executing pickled code (safetensors, or torch.load(weights_only))."""
    path = Path(path)
    if not path.is_file():
        raise NumclipError(f"weights file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise NumclipError(f"{path} is not a readable safetensors file: {e}") from None
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol before refusing
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, ValueError) as e:
        text = str(e)
        reason = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else text
        first = next((line.strip() for line in reason.splitlines() if line.strip()), type(e).__name__)
        raise NumclipError(
            f"refused to load {path}: it is not a plain tensor checkpoint that loads with "
            f"weights_only=True (it may contain pickled code, or be a TorchScript archive). "
            f"Convert it to .safetensors. Detail: {first}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise NumclipError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def create_backbone(cfg: ModelConfig, device: torch.device | str = "cpu",
                    preprocess_cfg: Optional[dict] = None) -> Backbone:
    """Build `cfg.arch` with weights from a pretrained tag, a local file, or none (random init).

    `preprocess_cfg` (open_clip's size/mean/std/interpolation dict) overrides the architecture's
    default, so a saved model keeps the transforms of the weights it was trained from.
    """
    if cfg.arch not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if cfg.arch.lower()[:4] in m.lower()][:8]
        hint = f" Similar names: {', '.join(close)}." if close else ""
        raise NumclipError(f"model.arch: unknown open_clip architecture '{cfg.arch}'.{hint}")
    from_file = is_weights_file(cfg.pretrained)
    tag = None if from_file else cfg.pretrained
    root_logger = logging.getLogger()
    old_level = root_logger.level  # open_clip warns on every random init; that is our tiny default
    root_logger.setLevel(logging.ERROR)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(cfg.arch, pretrained=tag)
    except RuntimeError as e:
        raise NumclipError(
            f"could not get pretrained weights '{cfg.pretrained}' for {cfg.arch}: {e}. Without "
            f"network access, download them elsewhere and set model.pretrained to the local file.") from None
    finally:
        root_logger.setLevel(old_level)
    if from_file:
        load_into(model, load_weights_file(cfg.pretrained), source=str(cfg.pretrained))
        if preprocess_cfg is None:
            preprocess_cfg = _saved_preprocess(cfg.pretrained)
    if preprocess_cfg is not None:
        from open_clip.model import set_model_preprocess_cfg
        from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

        merged = merge_preprocess_dict(PreprocessCfg(), preprocess_cfg)
        set_model_preprocess_cfg(model, merged)
        preprocess = image_transform_v2(PreprocessCfg(**merged), is_train=False)
    model.to(device)
    tokenizer = open_clip.get_tokenizer(cfg.arch)
    return Backbone(model=model, tokenizer=tokenizer, preprocess=preprocess, arch=cfg.arch,
                    pretrained=cfg.pretrained)


def save_backbone(backbone: Backbone, path: str | Path, source: str) -> None:
    """The open_clip weights as safetensors, with the arch, preprocessing and where they came from."""
    from safetensors.torch import save_file

    from numclip.core.atomic import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()}
    meta = {"arch": backbone.arch, "source": source, "preprocess": backbone.preprocess_cfg}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"numclip_backbone": json.dumps(meta)})


def _saved_preprocess(path: str | Path) -> Optional[dict]:
    """Preprocessing recorded by `save_backbone`, so a saved backbone keeps its weights' transforms."""
    if Path(path).suffix.lower() != ".safetensors":
        return None
    meta = safetensors_metadata(path, "backbone file").get("numclip_backbone")
    if meta is None:
        return None
    preprocess = json_object(meta, str(path), "backbone record ('numclip_backbone' metadata)").get("preprocess")
    if preprocess is None:
        return None
    try:
        return PreprocessCard.model_validate(preprocess).model_dump()
    except ValidationError as e:
        raise NumclipError(f"{path}: backbone record key {first_problem(e, 'preprocess')} (the file is "
                           "damaged; run `numclip pretrain` again)") from None


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load open_clip weights (converting third-party layouts as open_clip does), strictly."""
    from open_clip.factory import convert_state_dict

    state_dict = convert_state_dict(model, state_dict)
    if "logit_scale" in state_dict and model.logit_scale.ndim != state_dict["logit_scale"].ndim:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(model.logit_scale.shape)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        msg = str(e).splitlines()
        raise NumclipError(f"{source} does not match the architecture: {' '.join(msg[:3])[:600]}") from None


def backbone_config(params: Params) -> ModelConfig:
    """The backbone every stage after pretrain uses: the pretrain stage's output."""
    path = Path(params.pretrain.output)
    if not path.is_file():
        raise NumclipError(f"no pretrained backbone at {path} (pretrain.output): run `numclip pretrain` first")
    return ModelConfig(arch=params.model.arch, pretrained=str(path), device=params.model.device)
