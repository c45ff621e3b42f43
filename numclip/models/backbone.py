"""open_clip backbone factory: any open_clip architecture, a pretrained tag or a local weights file.

The tiny architecture `numclip-tiny` ships as a JSON config in `numclip/models/configs/` so that the
whole pipeline runs on a 2-core CPU. With `model.image_encoder`, a torchvision CNN
(`numclip/models/cnn.py`) replaces the architecture's image tower; its text tower stays.
"""

from __future__ import annotations

import json
import logging
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, get_args

import open_clip
import torch
from pydantic import ValidationError
from torch import nn

from numclip.config import ModelConfig, Params
from numclip.config.schema import ImageEncoder
from numclip.core.errors import NumclipError
from numclip.core.metadata import first_problem, json_object, safetensors_metadata
from numclip.models.card import PreprocessCard
from numclip.models.cnn import CNNTower, load_torchvision_state

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
    image_encoder: Optional[str] = None  # a CNN in place of the arch's image tower (numclip.models.cnn)

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
    if cfg.image_encoder is not None:
        model.visual = _cnn_visual(cfg, model)
    if from_file:
        state = load_weights_file(cfg.pretrained)
        if cfg.image_encoder is not None or _saved_image_encoder(cfg.pretrained) is not None:
            state = _visual_state(cfg, model, state)
        load_into(model, state, source=str(cfg.pretrained))
        if preprocess_cfg is None:
            preprocess_cfg = _saved_preprocess(cfg.pretrained)
    if preprocess_cfg is None and cfg.image_encoder is not None:
        preprocess_cfg = model.visual.preprocess_cfg  # ImageNet's mean and std, the arch's image size
    if preprocess_cfg is not None:
        from open_clip.model import set_model_preprocess_cfg
        from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

        merged = merge_preprocess_dict(PreprocessCfg(), preprocess_cfg)
        set_model_preprocess_cfg(model, merged)
        preprocess = image_transform_v2(PreprocessCfg(**merged), is_train=False)
    model.to(device)
    tokenizer = open_clip.get_tokenizer(cfg.arch)
    return Backbone(model=model, tokenizer=tokenizer, preprocess=preprocess, arch=cfg.arch,
                    pretrained=cfg.pretrained, image_encoder=cfg.image_encoder)


def _cnn_visual(cfg: ModelConfig, model: nn.Module) -> CNNTower:
    """The CNN tower that replaces `model.visual`: projected to the text embedding width, at the
    arch's image size, with `cfg.image_weights` (or random weights; the projection is always random,
    drawn from the global RNG)."""
    width = getattr(model.visual, "output_dim", None)
    if width is None and isinstance(getattr(model, "text_projection", None), torch.Tensor):
        width = model.text_projection.shape[-1]  # CLIP
    if width is None:
        width = getattr(getattr(model, "text", None), "output_dim", None)  # CustomTextCLIP's text tower
    if width is None:
        raise NumclipError(f"model.image_encoder: cannot tell the embedding width of {cfg.arch}'s towers")
    size = getattr(model.visual, "preprocess_cfg", {}).get("size", 224)
    tower = CNNTower(cfg.image_encoder, int(width), size)
    if cfg.image_weights is not None:
        try:
            state = load_weights_file(cfg.image_weights)
        except NumclipError as e:
            raise NumclipError(f"model.image_weights: {e}") from None
        load_torchvision_state(tower, state, f"model.image_weights: {cfg.image_weights}")
    return tower


def _visual_state(cfg: ModelConfig, model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights file's state with the image tower settled. A numclip backbone saved with this CNN
    holds its `visual.*` weights: they load strictly. A CLIP file (or a backbone of the arch's own
    tower) holds the tower the CNN replaced: its `visual.*` keys are dropped and the CNN keeps the
    weights it has, while every other key still loads strictly."""
    saved = _saved_image_encoder(cfg.pretrained)
    if saved is not None and saved != cfg.image_encoder:
        wanted = cfg.image_encoder or "null (the architecture's own tower)"
        raise NumclipError(f"{cfg.pretrained} holds a backbone with the {saved} image encoder but "
                           f"model.image_encoder is {wanted}")
    own = {f"visual.{k}": v for k, v in model.visual.state_dict().items()}
    if saved == cfg.image_encoder or any(k in state for k in own):
        if cfg.image_weights is not None:
            raise NumclipError(f"model.image_weights: {cfg.pretrained} (model.pretrained) already holds the "
                               "image encoder's weights; unset one of them")
        return state
    return {**{k: v for k, v in state.items() if not k.startswith("visual.")}, **own}


def save_backbone(backbone: Backbone, path: str | Path, source: str) -> None:
    """The open_clip weights as safetensors, with the arch, preprocessing and where they came from."""
    from safetensors.torch import save_file

    from numclip.core.atomic import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()}
    meta = {"arch": backbone.arch, "source": source, "preprocess": backbone.preprocess_cfg,
            "image_encoder": backbone.image_encoder}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"numclip_backbone": json.dumps(meta)})


def _backbone_record(path: str | Path) -> Optional[dict]:
    """What `save_backbone` recorded in a file's metadata (None for any other weights file)."""
    if Path(path).suffix.lower() != ".safetensors":
        return None
    meta = safetensors_metadata(path, "backbone file").get("numclip_backbone")
    if meta is None:
        return None
    return json_object(meta, str(path), "backbone record ('numclip_backbone' metadata)")


def _saved_image_encoder(path: str | Path) -> Optional[str]:
    """The CNN image encoder a numclip backbone file was saved with (None: the arch's own tower)."""
    record = _backbone_record(path)
    encoder = None if record is None else record.get("image_encoder")
    if encoder is not None and encoder not in get_args(ImageEncoder):
        raise NumclipError(f"{path}: backbone record key image_encoder: unknown image encoder {encoder!r} "
                           "(the file is damaged; run `numclip pretrain` again)")
    return encoder


def _saved_preprocess(path: str | Path) -> Optional[dict]:
    """Preprocessing recorded by `save_backbone`, so a saved backbone keeps its weights' transforms."""
    record = _backbone_record(path)
    if record is None:
        return None
    preprocess = record.get("preprocess")
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
    return ModelConfig(arch=params.model.arch, pretrained=str(path), device=params.model.device,
                       image_encoder=params.model.image_encoder)  # the file holds the CNN's weights
