"""The assembled model: CLIP image encoder + prompt learner + text tower + cosine head.

A saved model is one safetensors file: the full state dict plus JSON metadata (method, backbone,
rank words, preprocessing), so loading needs neither the params file nor any download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from numclip import __version__
from numclip.config import LearningRates, ModelConfig, Params
from numclip.config.methods import MethodBase, method_config
from numclip.core.atomic import atomic_path
from numclip.core.errors import NumclipError
from numclip.core.metadata import safetensors_metadata
from numclip.core.text import one_line
from numclip.kernels import ranking_weighted_cross_entropy
from numclip.models.backbone import Backbone, create_backbone
from numclip.models.card import BackboneCard, ConceptsCard, ModelCard
from numclip.models.concepts import ConceptBins, ImageAdapter, SSRRegressor, concept_bins
from numclip.models.head import Impl, cosine_logits, cosine_ranking_cross_entropy, head_logits
from numclip.models.prompts import PromptLearner, build_prompt_learner
from numclip.models.readouts import probabilities, readout_argmax, readout_expectation
from numclip.models.text import TextTower


class RankPromptModel(nn.Module):
    """logits = s * normalize(image_encoder(x)) @ normalize(text_tower(prompts))^T, one prompt per rank."""

    def __init__(self, backbone: Backbone, prompts: PromptLearner, card: ModelCard):
        super().__init__()
        self.clip = backbone.model
        self.prompts = prompts
        self.text = TextTower(backbone.model)
        self.tokenizer = backbone.tokenizer
        self.preprocess = backbone.preprocess
        self.card = card  # method, backbone and words: what a saved model needs to be rebuilt

    @property
    def num_ranks(self) -> int:
        """K, the number of fine ranks predicted."""
        return self.card.num_ranks

    @property
    def embed_dim(self) -> int:
        """D, the width of the shared image-text space (what a prototype file must match)."""
        return self.clip.visual.output_dim

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def prototypes(self) -> torch.Tensor:
        """The class vectors [classes, D] (unnormalised): text features of the prompts, or a probe's weights."""
        return self.prompts.encode(self.text)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images)

    def forward(self, images: torch.Tensor, prototypes: Optional[torch.Tensor] = None,
                impl: Impl = "auto") -> torch.Tensor:
        return self.forward_parts(images, prototypes, impl)[2]

    def forward_parts(self, images: torch.Tensor, prototypes: Optional[torch.Tensor] = None,
                      impl: Impl = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image features, prototypes, logits): what the losses beyond cross-entropy need."""
        if prototypes is None:
            prototypes = self.prototypes()
        features = self.encode_image(images)
        prototypes = prototypes.to(features.dtype)
        return features, prototypes, self.logits(features, prototypes, impl)

    def logits(self, features: torch.Tensor, prototypes: torch.Tensor, impl: Impl = "auto") -> torch.Tensor:
        """Scaled cosine similarity of image features [B, D] to prototypes [classes, D]."""
        return cosine_logits(features, prototypes.to(features.dtype), self.logit_scale(), impl=impl)

    def logits_and_ranking_ce(self, features: torch.Tensor, prototypes: torch.Tensor, targets: torch.Tensor,
                              mode: str, impl: Impl = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """(NumCLIP's ranking-weighted CE of the logits, the logits), the head and the loss fused."""
        return cosine_ranking_cross_entropy(features, prototypes.to(features.dtype), self.logit_scale(), targets,
                                            mode=mode, impl=impl)

    def head_bias(self) -> Optional[torch.Tensor]:
        """The head's bias: None for a cosine head (numclip.models.head.head_logits)."""
        return None

    def class_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The head's class of each fine label (the rank itself here)."""
        return labels

    def rank_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """P(rank) [B, K]: what calibration, the median read-out and the prediction intervals use."""
        return probabilities(logits.float())

    def readout(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted rank, continuous prediction): argmax and expectation sum_k k p_k."""
        return readout_argmax(logits), readout_expectation(logits)

    def extra_readouts(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Other continuous read-outs worth reporting beside `readout` (none for a rank head)."""
        return {}

    def head_modules(self) -> list[nn.Module]:
        return []

    def parameter_groups(self, lr: LearningRates) -> list[dict[str, Any]]:
        """Optimizer groups by role; a group with lr 0 is frozen (requires_grad False), not just idle."""
        groups: dict[str, list[nn.Parameter]] = {
            "image_encoder": list(self.clip.visual.parameters()),
            "text_encoder": self.text.parameters(),
            "logit_scale": [self.clip.logit_scale],
            "head": [p for m in self.head_modules() for p in m.parameters()],
        }
        for name, params in self.prompts.trainable().items():  # the learner names its own groups (context, ...)
            groups.setdefault(name, []).extend(params)
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


class ConceptModel(RankPromptModel):
    """NumCLIP: image -> language concept (C coarse bins) -> number (SSR regressor), docs/methods.md, NumCLIP."""

    def __init__(self, backbone: Backbone, prompts: PromptLearner, card: ModelCard):
        super().__init__(backbone, prompts, card)
        method = card.method_config
        c = card.concepts
        if c is None:
            raise NumclipError(f"method '{card.method}' has head: concepts but its card records no concepts")
        self.bins = bins = ConceptBins(tuple(c.edges), tuple(c.names), card.num_ranks, c.label_shift)
        self.adapter = ImageAdapter(int(self.clip.visual.output_dim), method.adapter_alpha)
        anchors = bins.lower_edges() if method.regressor_anchor == "lower_edge" else bins.centres()
        self.regressor = SSRRegressor(anchors, use_shift=method.regressor_shift)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.clip.encode_image(images))

    def logits_and_ranking_ce(self, features: torch.Tensor, prototypes: torch.Tensor, targets: torch.Tensor,
                              mode: str, impl: Impl = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """(NumCLIP's ranking-weighted CE of the logits, the logits), the head and the loss fused."""
        return cosine_ranking_cross_entropy(features, prototypes.to(features.dtype), self.logit_scale(), targets,
                                            mode=mode, impl=impl)

    def class_targets(self, labels: torch.Tensor) -> torch.Tensor:
        return self.bins.coarse(labels)

    def regress(self, logits: torch.Tensor) -> torch.Tensor:
        """The fine regressor's output y' (in units of label - label_shift)."""
        return self.regressor(logits.float())

    def readout(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value = self.regress(logits) + self.bins.label_shift
        return value.round().clamp(0, self.num_ranks - 1).long(), value

    def extra_readouts(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """The coarse stage alone: the argmax concept's bin centre, and the expectation over centres."""
        centres = self.bins.centres().to(logits.device) + self.bins.label_shift
        p = torch.softmax(logits.float(), dim=-1)
        return {"concept_argmax": centres[logits.argmax(dim=-1)], "concept_expectation": p @ centres}

    def head_modules(self) -> list[nn.Module]:
        return [self.adapter, self.regressor]

    def rank_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Each concept's probability shared evenly among the fine ranks of its bin."""
        coarse = self.bins.coarse(torch.arange(self.num_ranks, device=logits.device))
        sizes = torch.bincount(coarse, minlength=logits.shape[-1]).clamp(min=1).to(torch.float32)
        return probabilities(logits.float())[:, coarse] / sizes[coarse]


class LinearProbeModel(RankPromptModel):
    """The linear probe: logits = W f + b on the image features, no language and no logit scale."""

    def logits(self, features: torch.Tensor, prototypes: torch.Tensor, impl: Impl = "auto") -> torch.Tensor:
        return head_logits(features, prototypes, 1.0, self.head_bias())

    def logits_and_ranking_ce(self, features: torch.Tensor, prototypes: torch.Tensor, targets: torch.Tensor,
                              mode: str, impl: Impl = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(features, prototypes)
        return ranking_weighted_cross_entropy(logits.float(), targets, mode=mode, impl=impl), logits

    def head_bias(self) -> Optional[torch.Tensor]:
        return self.prompts.bias


# The model class of each `head` value (numclip.config.methods.HEADS).
HEADS: dict[str, type[RankPromptModel]] = {"ranks": RankPromptModel, "concepts": ConceptModel}


def _assemble(backbone: Backbone, card: ModelCard, seed: int) -> RankPromptModel:
    method = card.method_config
    prompts = build_prompt_learner(method, TextTower(backbone.model), backbone.tokenizer, card.prompt_words,
                                   card.zeroshot_template, seed=seed)
    device = next(backbone.model.parameters()).device
    model_class = LinearProbeModel if getattr(method, "probe", None) == "linear" else HEADS[method.head]
    return model_class(backbone, prompts, card).to(device)


def _card(params: Params, name: str, method: MethodBase, backbone: Backbone) -> ModelCard:
    words = params.rank_words()
    bins = concept_bins(params) if method.head == "concepts" else None
    return ModelCard(
        numclip_version=__version__, method=name, method_config=method,
        model=BackboneCard(arch=backbone.arch, pretrained=backbone.pretrained, image_encoder=backbone.image_encoder),
        preprocess=backbone.preprocess_cfg,
        num_ranks=len(words), rank_words=words, prompt_words=list(bins.names) if bins else words,
        concepts=None if bins is None else ConceptsCard(edges=list(bins.edges), names=list(bins.names),
                                                        label_shift=bins.label_shift),
        zeroshot_template=params.task.template)


def build_model(params: Params, method_name: str, backbone: Backbone) -> RankPromptModel:
    """A fresh model for `method_name` on `backbone`, initialised from params."""
    card = _card(params, method_name, params.method(method_name), backbone)
    torch.manual_seed(params.train.seed)  # the head's initialisation
    return _assemble(backbone, card, params.train.seed)


def zero_shot_model(params: Params, backbone: Backbone) -> RankPromptModel:
    """Zero-shot CLIP with the task's template and rank words (pretraining's check of the backbone);
    it leaves the global RNG alone, so it can be built in the middle of a run."""
    card = _card(params, "zero-shot", method_config(learner="fixed"), backbone)
    return _assemble(backbone, card, seed=0)


def save_model(model: RankPromptModel, path: str | Path, extra: Optional[dict[str, Any]] = None) -> None:
    state = {k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.cpu().contiguous()
             for k, v in model.state_dict().items()}
    card = model.card.model_copy(update=extra or {})
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"numclip": card.to_json()})


def read_model_card(path: str | Path) -> ModelCard:
    meta = safetensors_metadata(path, "model file").get("numclip")
    if meta is None:
        raise NumclipError(f"{path} is not a numclip model (no 'numclip' metadata)")
    return ModelCard.from_json(meta, str(path))


def load_model(path: str | Path, device: torch.device | str = "cpu") -> RankPromptModel:
    """Rebuild a saved model: architecture from metadata (no weights download), then its weights."""
    card = read_model_card(path)
    # initial values are overwritten by the saved state: do not depend on word files being present
    if hasattr(card.method_config, "rank_words_file"):
        card = card.model_copy(update={"method_config": card.method_config.model_copy(
            update={"rank_words_file": None})})
    try:
        backbone = create_backbone(ModelConfig(arch=card.model.arch, image_encoder=card.model.image_encoder), device,
                                   preprocess_cfg=card.preprocess_cfg())
        backbone.pretrained = card.model.pretrained
        model = _assemble(backbone, card, seed=0)
    except NumclipError as e:
        raise NumclipError(f"{path}: the model its card describes cannot be built: {e}") from None
    try:
        model.load_state_dict(load_file(str(path), device=str(device)), strict=True)
    except (RuntimeError, SafetensorError) as e:
        raise NumclipError(f"{path}: weights do not match the model they describe: {one_line(e)}") from None
    model.eval()
    return model
