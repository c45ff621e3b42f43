"""The pretrain stage: give the backbone a language prior before any ordinal method sees it.

A random-init backbone (the tiny default) is trained with CLIP's contrastive loss on the captioned
train split; a share of captions is replaced by the zero-shot template for the image's rank, so that
the template's words are ones the text encoder has seen. A backbone with real pretrained weights (an
open_clip tag or a local file) is saved unchanged. Either way the stage reports zero-shot accuracy on
val and test, which shows whether the prior is real.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from tqdm import tqdm

from numclip.atomic import write_json
from numclip.config import MethodConfig, Params
from numclip.data import ImageRankDataset
from numclip.inference import autocast, collect_logits, metrics_from_logits
from numclip.losses import clip_contrastive_loss
from numclip.models.backbone import Backbone, create_backbone, resolve_device, save_backbone
from numclip.models.ordinal import RankPromptModel
from numclip.models.prompts import build_prompt_learner
from numclip.models.text import TextTower
from numclip.runtime import load_checked_manifest, seed_everything
from numclip.train import cosine_schedule

MAX_LOGIT_SCALE = float(np.log(100.0))  # CLIP clamps its temperature the same way


class CaptionedImages(Dataset):
    """(image, caption) pairs; a caption is swapped for the rank's template caption with probability p."""

    def __init__(self, images: ImageRankDataset, template_captions: list[str], p: float, seed: int):
        self.images, self.template_captions, self.p = images, template_captions, p
        rng = np.random.default_rng(seed)
        self.draws = rng.random(len(images))  # fixed per image: the epoch order is what shuffles

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        image, label = self.images[i]
        caption = self.images.rows[i].caption
        if caption is None or self.draws[i] < self.p:
            caption = self.template_captions[label]
        return image, caption


def zero_shot_model(params: Params, backbone: Backbone) -> RankPromptModel:
    words = params.rank_words()
    prompts = build_prompt_learner(MethodConfig(learner="fixed"), TextTower(backbone.model), backbone.tokenizer,
                                   words, params.task.zeroshot_template)
    return RankPromptModel(backbone, prompts, {"rank_words": words, "num_ranks": len(words)})


def pretrain(params: Params, log: Callable[[str], None] = print) -> dict[str, Any]:
    start = time.time()
    cfg = params.pretrain
    seed_everything(cfg.seed)
    device = resolve_device(params.model.device)
    manifest = load_checked_manifest(params)
    backbone = create_backbone(params.model, device)
    if params.model.pretrained is not None:
        source, history = f"pretrained weights '{params.model.pretrained}' (saved unchanged)", []
    else:
        source = f"contrastive pretraining on {params.data.manifest} (train split, {cfg.epochs} epochs)"
        history = _contrastive(params, backbone, manifest, device, log)
    save_backbone(backbone, cfg.output, source)

    model = zero_shot_model(params, backbone)
    result: dict[str, Any] = {"source": source, "arch": params.model.arch, "history": history}
    for split in ("val", "test"):
        logits, targets = collect_logits(model, ImageRankDataset(manifest, split, backbone.preprocess),
                                         params.evaluate.batch_size, device)
        m = metrics_from_logits(model, logits, targets)
        result[f"zero_shot_{split}"] = {k: m[k] for k in ("accuracy", "mae_argmax", "mae_expectation", "off_by_one")}
    result["chance_accuracy"] = 1.0 / model.num_ranks
    result["seconds"] = round(time.time() - start, 1)
    write_json(cfg.metrics, result)
    test = result["zero_shot_test"]
    log(f"pretrain: {source} -> {cfg.output}; zero-shot test accuracy {test['accuracy']:.3f} "
        f"(chance {result['chance_accuracy']:.3f}), MAE {test['mae_argmax']:.3f} [{result['seconds']:.0f} s]")
    return result


def _contrastive(params: Params, backbone: Backbone, manifest, device: torch.device,
                 log: Callable[[str], None]) -> list[dict[str, float]]:
    cfg = params.pretrain
    clip = backbone.model
    words = params.rank_words()
    augment = transforms.Compose([transforms.RandomHorizontalFlip(), backbone.preprocess])
    data = CaptionedImages(ImageRankDataset(manifest, "train", augment),
                           [params.task.zeroshot_template.format(w) for w in words], cfg.template_caption_prob,
                           cfg.seed)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, num_workers=params.train.num_workers,
                        generator=torch.Generator().manual_seed(cfg.seed), drop_last=len(data) > cfg.batch_size)
    for p in clip.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, cfg.epochs * len(loader))
    history = []
    clip.train()
    for epoch in range(1, cfg.epochs + 1):
        losses = []
        for images, captions in tqdm(loader, desc=f"pretrain epoch {epoch}/{cfg.epochs}", leave=False, disable=None):
            groups = {c: i for i, c in enumerate(dict.fromkeys(captions))}
            caption_group = torch.tensor([groups[c] for c in captions], device=device)
            with autocast(device):
                image_features = clip.encode_image(images.to(device))
                text_features = clip.encode_text(backbone.tokenizer(list(captions)).to(device))
            loss = clip_contrastive_loss(image_features.float(), text_features.float(), clip.logit_scale.exp(),
                                         caption_group)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            losses.append(loss.item())
        history.append({"epoch": epoch, "loss": float(np.mean(losses))})
        log(f"pretrain epoch {epoch}: contrastive loss {history[-1]['loss']:.3f}")
    clip.eval()
    return history
