"""Inference on the user's own images: a folder, a list file or image paths -> ranks and probabilities.

With a prototype head (from `numclip evaluate`), the text encoder is never run: one image-encoder
pass and one matrix product per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from numclip.atomic import write_csv
from numclip.data import load_image
from numclip.errors import NumclipError
from numclip.inference import autocast
from numclip.losses import probabilities
from numclip.models.head import cosine_logits, load_prototypes
from numclip.models.ordinal import RankPromptModel, load_model

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


@dataclass
class Prediction:
    path: str
    rank: Optional[int] = None
    expectation: Optional[float] = None
    probabilities: Optional[list[float]] = None
    error: str = ""


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand folders (recursively) and list files (one path per line, first column) into image paths."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.suffix.lower() in IMAGE_SUFFIXES:
            paths.append(item)  # a missing image becomes an error row, not a crash
        elif item.is_file():
            for line in item.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    p = Path(line.split()[0])
                    paths.append(p if p.is_absolute() else item.parent / p)
        else:
            raise NumclipError(f"predict input not found or not an image, folder or list file: {item}")
    if not paths:
        raise NumclipError(f"no images found in {', '.join(map(str, inputs))}")
    return paths


class Predictor:
    """A loaded model, with prototypes from a head file or computed once from its prompts."""

    def __init__(self, model_file: str | Path, head_file: Optional[str | Path] = None,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model: RankPromptModel = load_model(model_file, self.device)
        if head_file is not None:
            prototypes, self.scale, meta = load_prototypes(head_file)
            expected = len(self.model.info["prompt_words"])
            if prototypes.shape[0] != expected:
                raise NumclipError(f"{head_file} has {prototypes.shape[0]} prototypes but {model_file} "
                                   f"has {expected} prompts")
            self.prototypes = prototypes.to(self.device)
        else:
            with torch.no_grad():
                self.prototypes = self.model.prototypes().float()
                self.scale = float(self.model.logit_scale())

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(self.device):
            features = self.model.encode_image(images.to(self.device))
        return cosine_logits(features.float(), self.prototypes, self.scale)

    def predict(self, paths: Sequence[Path], batch_size: int = 64) -> list[Prediction]:
        out: list[Prediction] = []
        batch: list[tuple[Path, torch.Tensor]] = []

        def flush() -> None:
            if not batch:
                return
            logits = self.logits(torch.stack([t for _, t in batch]))
            rank, value = self.model.readout(logits)
            for (path, _), r, v, p in zip(batch, rank.tolist(), value.tolist(), probabilities(logits).cpu()):
                out.append(Prediction(str(path), r, v, p.tolist()))
            batch.clear()

        for path in paths:
            try:
                batch.append((path, self.model.preprocess(load_image(path))))
            except NumclipError as e:
                flush()
                out.append(Prediction(str(path), error=str(e)))
                continue
            if len(batch) == batch_size:
                flush()
        flush()
        return out


def predict(model_file: str | Path, inputs: Sequence[str | Path], head_file: Optional[str | Path] = None,
            batch_size: int = 64, device: torch.device | str = "cpu") -> list[Prediction]:
    """Predict ranks for images given as folders, list files or paths (Python API of `numclip predict`)."""
    return Predictor(model_file, head_file, device).predict(collect_images(inputs), batch_size)


def write_predictions(predictions: Sequence[Prediction], path: str | Path, num_classes: int) -> None:
    """CSV: path, rank, expectation, p_0..p_{C-1}, error (empty when the image was read).

    `expectation` is the continuous prediction (NumCLIP: the fine regressor's output); the p_ columns
    are the head's class probabilities (ranks, or NumCLIP's concepts)."""
    def row(p: Prediction) -> list[Any]:
        probs = [f"{x:.6f}" for x in p.probabilities] if p.probabilities else [""] * num_classes
        expectation = "" if p.expectation is None else f"{p.expectation:.4f}"
        return [p.path, "" if p.rank is None else p.rank, expectation, *probs, p.error]

    write_csv(path, ["path", "rank", "expectation", *[f"p_{k}" for k in range(num_classes)], "error"],
              map(row, predictions))
