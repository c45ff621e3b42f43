"""Inference on the user's own images: a folder, a list file or image paths -> ranks and probabilities.

With a prototype head (from `numclip evaluate`), the text encoder is never run: one image-encoder
pass and one matrix product per batch.

`numclip predict` streams: paths are read lazily, predicted one batch at a time and written row by
row, so its memory does not grow with the number of images.
"""

from __future__ import annotations

import csv
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import torch

from numclip.core.atomic import atomic_path
from numclip.core.errors import NumclipError
from numclip.core.text import printable
from numclip.data import load_image
from numclip.data.sources import IMAGE_EXTENSIONS
from numclip.evaluation.conformal import prediction_intervals
from numclip.evaluation.groups import aggregate_groups
from numclip.evaluation.inference import autocast
from numclip.evaluation.metrics import median_rank
from numclip.models.head import ExportedHead, head_logits, load_head
from numclip.models.ordinal import RankPromptModel, load_model
from numclip.models.readouts import probabilities


@dataclass
class Prediction:
    path: str
    rank: Optional[int] = None
    expectation: Optional[float] = None
    probabilities: Optional[list[float]] = None
    error: str = ""
    median: Optional[int] = None  # the median read-out of the rank distribution
    lo: Optional[int] = None  # the conformal interval [lo, hi] (a head exported by `numclip evaluate`)
    hi: Optional[int] = None


@dataclass
class PredictionCounts:
    """What `write_predictions` wrote, so callers can summarise without keeping the rows."""
    predicted: int = 0
    failed: int = 0
    first_error: str = ""


def _walk_images(folder: Path, skipped: list[Path]) -> Iterator[Path]:
    """Image files under `folder`, depth first with each directory's entries sorted by name; other
    files (not hidden) are appended to `skipped`, so the caller can say what it left out.

    The same order as sorting every `rglob` match, but only the listings on the current path are held;
    like `rglob`, symlinked directories are not followed and unreadable ones are skipped."""
    try:
        with os.scandir(folder) as it:
            entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
    except PermissionError:
        return
    for name, is_dir in entries:
        if is_dir:
            yield from _walk_images(folder / name, skipped)
        elif Path(name).suffix.lower() in IMAGE_EXTENSIONS:
            yield folder / name
        elif not name.startswith("."):
            skipped.append(folder / name)


def _read_list_file(path: Path) -> Iterator[Path]:
    """Paths from a list file (first column; blank and '#' lines skipped), read line by line."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:  # any file-name bytes
        for physical in f:
            for line in physical.splitlines():  # the same line breaks as str.splitlines on the whole file
                if line.strip() and not line.lstrip().startswith("#"):
                    p = Path(line.split()[0])
                    yield p if p.is_absolute() else path.parent / p


def iter_images(inputs: Sequence[str | Path], skipped: Optional[list[Path]] = None) -> Iterator[Path]:
    """Expand folders (recursively) and list files (one path per line, first column) into image paths, lazily.

    Every input is checked up front and the first image is looked for before returning, so a bad
    input or an empty selection fails before any prediction is made. Files in the folders that are
    not images (by extension) are appended to `skipped` as the walk meets them."""
    skipped = [] if skipped is None else skipped
    sources: list[Iterable[Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            sources.append(_walk_images(item, skipped))
        elif item.suffix.lower() in IMAGE_EXTENSIONS:
            sources.append([item])  # a missing image becomes an error row, not a crash
        elif item.is_file():
            sources.append(_read_list_file(item))
        else:
            raise NumclipError(f"predict input not found or not an image, folder or list file: {item}")
    paths = itertools.chain.from_iterable(sources)
    first = next(paths, None)
    if first is None:
        raise NumclipError(f"no images found in {', '.join(map(str, inputs))}")
    return itertools.chain([first], paths)


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """All of `iter_images` as a list (for callers that need the paths up front)."""
    return list(iter_images(inputs))


class Predictor:
    """A loaded model, with prototypes from a head file or computed once from its prompts."""

    def __init__(self, model_file: str | Path, head_file: Optional[str | Path] = None,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model: RankPromptModel = load_model(model_file, self.device)
        if head_file is not None:
            self.head = load_head(head_file)
            expected = (len(self.model.card.prompt_words), self.model.embed_dim)
            if tuple(self.head.prototypes.shape) != expected:
                got = self.head.prototypes.shape
                raise NumclipError(f"{head_file} holds {got[0]} prototypes of width {got[1]} "
                                   f"but {model_file} has {expected[0]} prompts of width {expected[1]}: "
                                   "give the head exported with this model")
        else:
            with torch.no_grad():
                self.head = ExportedHead(self.model.prototypes().float(), float(self.model.logit_scale()),
                                         self.model.head_bias(), {})
        self.head.prototypes = self.head.prototypes.to(self.device)
        if self.head.bias is not None:
            self.head.bias = self.head.bias.detach().float().to(self.device)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(self.device):
            features = self.model.encode_image(images.to(self.device))
        return head_logits(features.float(), self.head.prototypes, self.head.scale, self.head.bias)

    def iter_predict(self, paths: Iterable[Path], batch_size: int = 64) -> Iterator[Prediction]:
        """Predictions in input order, one batch at a time: `paths` is read at most one batch ahead."""
        batch: list[tuple[Path, torch.Tensor]] = []

        def flush() -> list[Prediction]:
            if not batch:
                return []
            logits = self.logits(torch.stack([t for _, t in batch]))
            rank, value = self.model.readout(logits)
            ranks = self.model.rank_probabilities(logits).cpu().numpy()
            if self.head.threshold is None:  # no calibrated head: no intervals
                lo = hi = [None] * len(batch)
            else:
                lo, hi = (x.tolist() for x in prediction_intervals(ranks, self.head.threshold))
            out = [Prediction(str(path), r, v, p.tolist(), median=m, lo=a, hi=b)
                   for (path, _), r, v, p, m, a, b in zip(batch, rank.tolist(), value.tolist(),
                                                          probabilities(logits).cpu(), median_rank(ranks).tolist(),
                                                          lo, hi)]
            batch.clear()
            return out

        for path in paths:
            try:
                batch.append((path, self.model.preprocess(load_image(path))))
            except NumclipError as e:
                yield from flush()
                yield Prediction(str(path), error=str(e))
                continue
            if len(batch) == batch_size:
                yield from flush()
        yield from flush()

    def predict(self, paths: Iterable[Path], batch_size: int = 64) -> list[Prediction]:
        return list(self.iter_predict(paths, batch_size))


def predict(model_file: str | Path, inputs: Sequence[str | Path], head_file: Optional[str | Path] = None,
            batch_size: int = 64, device: torch.device | str = "cpu") -> list[Prediction]:
    """Predict ranks for images given as folders, list files or paths (Python API of `numclip predict`)."""
    return Predictor(model_file, head_file, device).predict(collect_images(inputs), batch_size)


def write_predictions(predictions: Iterable[Prediction], path: str | Path, num_classes: int,
                      groups: Optional[GroupPredictions] = None) -> PredictionCounts:
    """CSV: path, rank, expectation, median, lo, hi, p_0..p_{C-1}, error (empty when the image was read).

    `expectation` is the continuous prediction (NumCLIP: the fine regressor's output), `median` the median
    of the rank distribution, [lo, hi] the conformal interval (empty without a calibrated head); the p_
    columns are the head's class probabilities (ranks, or NumCLIP's concepts). Rows are written as they
    come to a temporary file that replaces `path` only once all of them are written; `groups` collects
    what the per-group read-out needs (three numbers per image)."""
    counts = PredictionCounts()
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "rank", "expectation", "median", "lo", "hi",
                         *[f"p_{k}" for k in range(num_classes)], "error"])
        for p in predictions:
            probs = [f"{x:.6f}" for x in p.probabilities] if p.probabilities else [""] * num_classes
            cells = [p.rank, None if p.expectation is None else f"{p.expectation:.4f}", p.median, p.lo, p.hi]
            writer.writerow([printable(p.path), *("" if v is None else v for v in cells), *probs, printable(p.error)])
            if groups is not None and not p.error:
                groups.add(p)
            if p.error:
                counts.failed += 1
                counts.first_error = counts.first_error or p.error
            else:
                counts.predicted += 1
    return counts


class GroupPredictions:
    """One prediction per group of images (a person's photos, a video's frames): an image's group is the
    folder it lies in; pooled as `evaluate.group_aggregate` says (numclip.evaluation.groups)."""

    def __init__(self, num_ranks: int, how: str):
        self.num_ranks, self.how = num_ranks, how
        self.ids: list[str] = []
        self.ranks: list[int] = []
        self.values: list[float] = []

    def add(self, p: Prediction) -> None:
        self.ids.append(printable(str(Path(p.path).parent)))
        self.ranks.append(p.rank)
        self.values.append(p.expectation)

    def write(self, path: str | Path) -> int:
        """CSV: group, images, rank, value; returns the number of groups."""
        rows: Iterable = []
        if self.ids:
            pooled = aggregate_groups(self.ids, None, self.ranks, self.values, self.num_ranks, self.how)
            rows = zip(pooled["groups"], pooled["count"], pooled["rank"], (f"{v:.4f}" for v in pooled["value"]))
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["group", "images", "rank", "value"])
            writer.writerows(rows)
        return len(set(self.ids))
