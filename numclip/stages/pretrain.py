"""The pretrain stage: give the backbone a language prior before any ordinal method sees it.

A random-init backbone (the tiny default) is trained with CLIP's contrastive loss on the captioned
train split; a share of captions is replaced by the zero-shot template for the image's rank, so that
the template's words are ones the text encoder has seen. By default the loss is count-aware
(pretrain.counting, docs/methods.md, Count-aware CLIP): each counting caption is also contrasted with
counterfactual captions naming a wrong count. A backbone with real pretrained weights (an open_clip
tag or a local file) is saved unchanged, or fine-tuned with the same loss when
pretrain.finetune_pretrained is set. Either way the stage reports zero-shot accuracy on val and test,
which shows whether the prior is real.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from numclip.config import Params
from numclip.core.atomic import write_json
from numclip.core.progress import progress
from numclip.core.runtime import run_record, seed_everything
from numclip.counting import CountingBatchSampler, all_counterfactuals, counterfactual, is_counting
from numclip.data import ImageRankDataset
from numclip.data.manifest import load_checked_manifest
from numclip.evaluation.diagnosis import PRETRAIN_HINT, chance_accuracy, learning_warnings, report
from numclip.evaluation.inference import autocast, collect_logits, metrics_from_logits
from numclip.losses.contrastive import clip_contrastive_loss
from numclip.losses.counting import count_aware_clip_loss, counting_contrastive_loss
from numclip.models.backbone import Backbone, create_backbone, resolve_device, save_backbone
from numclip.models.ordinal import zero_shot_model
from numclip.models.text import encode_token_ids
from numclip.training.schedules import cosine_schedule

MAX_LOGIT_SCALE = float(np.log(100.0))  # CLIP clamps its temperature the same way


class CaptionedImages(Dataset):
    """(image, caption) pairs; a caption is swapped for the rank's template caption with probability p."""

    def __init__(self, images: ImageRankDataset, template_captions: list[str], p: float, seed: int):
        self.images, self.template_captions, self.p = images, template_captions, p
        rng = np.random.default_rng(seed)
        self.draws = rng.random(len(images))  # fixed per image: the epoch order is what shuffles

    def __len__(self) -> int:
        return len(self.images)

    def caption(self, i: int) -> str:
        caption = self.images.rows[i].caption
        if caption is None or self.draws[i] < self.p:
            caption = self.template_captions[self.images.rows[i].label]
        return caption

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        image, _ = self.images[i]
        return image, self.caption(i)


def pretrain(params: Params, log: Callable[[str], None] = print) -> dict[str, Any]:
    start = time.time()
    cfg = params.pretrain
    seed_everything(cfg.seed)
    device = resolve_device(params.model.device)
    manifest = load_checked_manifest(params)
    backbone = create_backbone(params.model, device)
    if params.model.pretrained is not None and not cfg.finetune_pretrained:
        source, history = f"pretrained weights '{params.model.pretrained}' (saved unchanged)", []
    else:
        loss = _loss_name(params.count_loss_weight, cfg.counting.negatives)
        source = (f"{loss} {'fine-tuning' if params.model.pretrained else 'pretraining'} on "
                  f"{params.data.manifest} (train split, {cfg.epochs} epochs)")
        history = _contrastive(params, backbone, manifest, device, log)
    save_backbone(backbone, cfg.output, source)

    model = zero_shot_model(params, backbone)
    result: dict[str, Any] = {"source": source, "arch": params.model.arch, "history": history}
    for split in ("val", "test"):
        logits, targets = collect_logits(model, ImageRankDataset(manifest, split, backbone.preprocess),
                                         params.evaluate.batch_size, device)
        m = metrics_from_logits(model, logits, targets)
        result[f"zero_shot_{split}"] = {k: m[k] for k in ("accuracy", "mae_argmax", "mae_expectation", "off_by_one")}
        if split == "val":
            val_metrics = m
    result["chance_accuracy"] = chance_accuracy(model.num_ranks)
    result["warnings"] = learning_warnings(val_metrics, model.num_ranks, "the zero-shot prior on val")
    report(result["warnings"], PRETRAIN_HINT)
    result["run"] = run_record(cfg.seed, device)
    result["seconds"] = round(time.time() - start, 1)
    write_json(cfg.metrics, result)
    test = result["zero_shot_test"]
    log(f"pretrain: {source} -> {cfg.output}; zero-shot test accuracy {test['accuracy']:.3f} "
        f"(chance {result['chance_accuracy']:.3f}), MAE {test['mae_argmax']:.3f} [{result['seconds']:.0f} s]")
    return result


def _loss_name(weight: float, negatives: str) -> str:
    if weight == 0:
        return "contrastive (plain CLIP loss)"
    negatives = "one counterfactual" if negatives == "one" else "all 8 counterfactuals"
    return f"count-aware contrastive (lambda {weight:g}, {negatives})"


def _loader(data: CaptionedImages, params: Params) -> DataLoader:
    """Shuffled batches, or batches with a fixed share of counting captions (pretrain.counting.fraction).
    The plain baseline and the count-aware run get the same batches: only the loss differs."""
    cfg = params.pretrain
    workers = params.train.num_workers
    if cfg.counting.fraction is not None:
        sampler = CountingBatchSampler([is_counting(data.caption(i)) for i in range(len(data))],
                                       cfg.batch_size, cfg.counting.fraction, cfg.seed,
                                       drop_last=len(data) > cfg.batch_size)
        return DataLoader(data, batch_sampler=sampler, num_workers=workers)
    return DataLoader(data, batch_size=cfg.batch_size, shuffle=True, num_workers=workers,
                      generator=torch.Generator().manual_seed(cfg.seed), drop_last=len(data) > cfg.batch_size)


def _counting_loss(clip, backbone: Backbone, captions: list[str], image_features: torch.Tensor,
                   text_features: torch.Tensor, negatives: str, rng: random.Random,
                   device: torch.device) -> torch.Tensor:
    """L_count over the batch's counting captions; their counterfactuals are encoded here only, never
    as negatives of the CLIP loss."""
    rows = [k for k, c in enumerate(captions) if is_counting(c)]
    if negatives == "one":
        fakes = [[counterfactual(captions[k], rng)] for k in rows]
    else:
        fakes = [all_counterfactuals(captions[k]) for k in rows]
    m = len(fakes[0]) if fakes else 1
    cf_features = image_features.new_zeros((0, m, image_features.shape[1]))
    if rows:
        with autocast(device):
            encoded = encode_token_ids(clip, backbone.tokenizer([f for fs in fakes for f in fs]).to(device))
        cf_features = encoded.float().reshape(len(rows), m, -1)
    index = torch.tensor(rows, dtype=torch.long, device=device)
    return counting_contrastive_loss(image_features[index], text_features[index], cf_features,
                                     clip.logit_scale.exp())


def _contrastive(params: Params, backbone: Backbone, manifest, device: torch.device,
                 log: Callable[[str], None]) -> list[dict[str, float]]:
    cfg = params.pretrain
    counting, count_weight = cfg.counting, params.count_loss_weight
    clip = backbone.model
    words = params.rank_words()
    augment = transforms.Compose([transforms.RandomHorizontalFlip(), backbone.preprocess])
    data = CaptionedImages(ImageRankDataset(manifest, "train", augment),
                           [params.task.template.format(w) for w in words], cfg.template_caption_prob,
                           cfg.seed)
    loader = _loader(data, params)
    rng = random.Random(cfg.seed)  # counterfactual draws: their own stream, so batches match the baseline's
    for p in clip.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, cfg.epochs * len(loader))
    history = []
    clip.train()
    for epoch in range(1, cfg.epochs + 1):
        losses, count_losses = [], []
        for images, captions in progress(loader, f"pretrain epoch {epoch}/{cfg.epochs}"):
            captions = list(captions)
            groups = {c: i for i, c in enumerate(dict.fromkeys(captions))}
            caption_group = torch.tensor([groups[c] for c in captions], device=device)
            with autocast(device):
                image_features = clip.encode_image(images.to(device)).float()
                text_features = encode_token_ids(clip, backbone.tokenizer(captions).to(device)).float()
            loss = clip_contrastive_loss(image_features, text_features, clip.logit_scale.exp(), caption_group)
            if count_weight > 0:
                count_loss = _counting_loss(clip, backbone, captions, image_features, text_features,
                                            counting.negatives, rng, device)
                loss = count_aware_clip_loss(loss, count_loss, count_weight)
                count_losses.append(count_loss.item())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            losses.append(loss.item())
        history.append({"epoch": epoch, "loss": float(np.mean(losses))})
        text = f"pretrain epoch {epoch}: loss {history[-1]['loss']:.3f}"
        if count_losses:
            history[-1]["count_loss"] = float(np.mean(count_losses))
            text += f" (counting loss {history[-1]['count_loss']:.3f})"
        log(text)
    clip.eval()
    return history
