"""CountBench-style zero-shot counting: does the backbone's text side tell "three dogs" from "four dogs"?

Each image's caption is rewritten with every count word two..ten; the caption most similar to the
image names the predicted count (Paiss et al., "Teaching CLIP to Count to Ten", ICCV 2023). Items come
from the synthetic manifest's counting captions, or from a user's local copy of CountBench.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Optional
from urllib.parse import unquote, urlparse

import numpy as np
import torch
import torch.nn.functional as F

from numclip.core.errors import NumclipError
from numclip.counting.captions import COUNTS, count_captions, find_count
from numclip.data.images import load_image
from numclip.data.manifest import Manifest
from numclip.data.sources import IMAGE_EXTENSIONS
from numclip.evaluation.inference import autocast
from numclip.models.backbone import Backbone
from numclip.models.text import encode_token_ids

FIELDS = ("image_url", "text", "number")
LOWEST, HIGHEST = COUNTS[0], COUNTS[-1]


@dataclass
class CountItem:
    """One image to count: its caption names a single count two..ten (a word, or a digit)."""

    image: Path
    caption: str
    count: int
    source: str  # where it came from, for the per-image predictions


# ------------------------------------------------------------------------------------------ items
def synthetic_items(manifest: Manifest, split: str) -> list[CountItem]:
    """The split's rows with a counting caption; the count is read from the caption (not the label),
    so any captioned dataset works, whatever its ranks mean."""
    items = []
    for i, row in enumerate(manifest.split(split)):
        mention = find_count(row.caption) if row.caption else None
        if mention is not None:
            items.append(CountItem(image=manifest.abs_path(row), caption=row.caption, count=mention.count,
                                   source=f"manifest {split} row {i} ({row.path})"))
    return items


def read_countbench(json_path: str | Path, images_dir: str | Path,
                    check_images: bool = True) -> tuple[list[CountItem], list[dict[str, Any]]]:
    """Items of a local CountBench copy, and the entries that cannot be evaluated with the reason.

    CountBench's image URLs rot, so a missing image (or an undecodable one, when `check_images`) is
    reported, not fatal; so are a `number` outside 2..10 and a text without a single count. The
    `number` field is the ground truth: when the text's count word disagrees, the item is kept with
    `number` as its count (the nine substituted captions do not depend on which word the text had).
    A malformed file (not JSON, not a list, an entry without the fields) is a NumclipError.
    """
    json_path, images_dir = Path(json_path), Path(images_dir)
    entries = _load_entries(json_path)
    if not images_dir.is_dir():
        raise NumclipError(f"CountBench images folder not found: {images_dir} (counting.countbench_images)")
    images = _match_images(entries, images_dir)
    items, rejects = [], []
    for i, entry in enumerate(entries):
        reason = _label_problem(entry) or _image_problem(images.get(i), entry, check_images)
        if reason is not None:
            rejects.append({"index": i, "image_url": entry["image_url"], "reason": reason})
            continue
        items.append(CountItem(image=images[i], caption=entry["text"], count=entry["number"],
                               source=f"{json_path.name}[{i}]"))
    return items, rejects


def _load_entries(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise NumclipError(f"CountBench file not found: {path} (counting.countbench_json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise NumclipError(f"{path} is not valid JSON: {e or 'nested too deeply'}") from None
    if not isinstance(data, list):
        raise NumclipError(f"{path} must hold a JSON list of entries, got {type(data).__name__}")
    for i, entry in enumerate(data):
        _check_entry(path, i, entry)
    return data


def _check_entry(path: Path, i: int, entry: Any) -> None:
    where = f"{path} entry [{i}]"
    if not isinstance(entry, dict):
        raise NumclipError(f"{where} is a {type(entry).__name__}, not an object with {', '.join(FIELDS)}")
    missing = [f for f in FIELDS if f not in entry]
    if missing:
        raise NumclipError(f"{where} lacks field(s) {', '.join(missing)} (CountBench entries have "
                           f"{', '.join(FIELDS)})")
    if not isinstance(entry["text"], str):
        raise NumclipError(f"{where}: text must be a string, got {entry['text']!r}")
    if isinstance(entry["number"], bool) or not isinstance(entry["number"], int):
        raise NumclipError(f"{where}: number must be an integer, got {entry['number']!r}")
    if entry["image_url"] is not None and not isinstance(entry["image_url"], str):
        raise NumclipError(f"{where}: image_url must be a string, got {entry['image_url']!r}")


def _label_problem(entry: dict[str, Any]) -> Optional[str]:
    if not LOWEST <= entry["number"] <= HIGHEST:
        return f"number {entry['number']} outside {LOWEST}..{HIGHEST}"
    if find_count(entry["text"]) is None:
        return f"text names no single count {LOWEST}..{HIGHEST}: {entry['text']!r}"
    return None


def _image_problem(path: Optional[Path], entry: dict[str, Any], check: bool) -> Optional[str]:
    if path is None:
        base = url_basename(entry["image_url"])
        also = f" or '{base}'" if base else ""
        return f"image not found (looked for <index>{'|'.join(IMAGE_EXTENSIONS)}, zero-padded too{also})"
    if check:
        try:
            load_image(path)
        except NumclipError as e:
            return f"unreadable image: {e}"
    return None


def url_basename(url: Optional[str]) -> str:
    """The file name at the end of a URL's path (query and fragment dropped, %-escapes decoded)."""
    if not url:
        return ""
    return PurePosixPath(unquote(urlparse(url).path)).name


def _match_images(entries: list[dict[str, Any]], folder: Path) -> dict[int, Path]:
    """Entry index -> image file: by index first (`7.jpg`, `0007.png`), then by the URL's basename.

    A basename shared by several entries identifies none of them, and a file already taken by its
    index is not given to another entry by basename, so no image is scored under two labels.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file())
    by_index: dict[int, Path] = {}
    for p in files:
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.stem.isdigit():
            by_index.setdefault(int(p.stem), p)
    found = {i: by_index[i] for i in range(len(entries)) if i in by_index}
    by_name = {p.name: p for p in files}
    names = [url_basename(e["image_url"]) for e in entries]
    shared = {n for n in names if n and names.count(n) > 1}
    taken = set(found.values())
    for i, name in enumerate(names):
        p = by_name.get(name)
        if i not in found and name and name not in shared and p is not None and p not in taken:
            found[i] = p
            taken.add(p)
    return found


# ------------------------------------------------------------------------------------- evaluation
def evaluate_counting(backbone: Backbone, items: list[CountItem], device: torch.device | str,
                      batch_size: int) -> dict[str, Any]:
    """Zero-shot counting: argmax over the nine count captions of each image's cosine similarity.

    Returns n, accuracy, mad (mean |predicted - true|), chance_accuracy, the 9x9 confusion (rows true
    two..ten, columns predicted), per_count_accuracy (None for counts absent) and the predictions
    [[source, true, predicted], ...].
    """
    if not items:
        raise NumclipError("no counting items to evaluate: need images whose caption names a single "
                           f"count {LOWEST}..{HIGHEST}")
    captions = [_captions(item) for item in items]
    chosen = choose_captions(backbone, [item.image for item in items], captions, device, batch_size)
    predicted = [LOWEST + i for i in chosen]
    return counting_metrics(items, predicted)


def choose_captions(backbone: Backbone, images: list[Path], candidates: list[list[str]],
                    device: torch.device | str, batch_size: int) -> list[int]:
    """For each image, the index of the most cosine-similar of its candidate captions (zero-shot
    choice; every image has the same number of candidates). Identical captions are encoded once."""
    if len({len(c) for c in candidates}) > 1:
        raise ValueError("every image needs the same number of candidate captions")
    device = torch.device(device)
    model = backbone.model
    was_training = model.training
    model.eval()
    try:
        unique = list(dict.fromkeys(c for options in candidates for c in options))
        text = _encode_texts(backbone, unique, device, batch_size)
        image = _encode_images(backbone, images, device, batch_size)
    finally:
        model.train(was_training)
    row = {c: i for i, c in enumerate(unique)}
    index = torch.tensor([[row[c] for c in options] for options in candidates])  # [N, C]
    scores = torch.einsum("nd,nkd->nk", image, text[index])
    return scores.argmax(dim=1).tolist()


def _captions(item: CountItem) -> list[str]:
    nine = count_captions(item.caption)
    if nine is None:
        raise NumclipError(f"{item.source}: caption {item.caption!r} names no single count "
                           f"{LOWEST}..{HIGHEST}")
    return nine


@torch.no_grad()
def _encode_texts(backbone: Backbone, captions: list[str], device: torch.device,
                  batch_size: int) -> torch.Tensor:
    chunks = []
    for start in range(0, len(captions), batch_size):
        tokens = backbone.tokenizer(captions[start:start + batch_size]).to(device)
        with autocast(device):
            chunks.append(encode_token_ids(backbone.model, tokens).float().cpu())
    return F.normalize(torch.cat(chunks), dim=-1)


@torch.no_grad()
def _encode_images(backbone: Backbone, paths: list[Path], device: torch.device,
                   batch_size: int) -> torch.Tensor:
    chunks = []
    for start in range(0, len(paths), batch_size):
        batch = torch.stack([backbone.preprocess(load_image(p)) for p in paths[start:start + batch_size]])
        with autocast(device):
            chunks.append(backbone.model.encode_image(batch.to(device)).float().cpu())
    return F.normalize(torch.cat(chunks), dim=-1)


def counting_metrics(items: list[CountItem], predicted: list[int]) -> dict[str, Any]:
    """Accuracy, mean absolute deviation, confusion and per-count accuracy of predicted counts."""
    true = np.array([item.count for item in items])
    pred = np.array(predicted)
    k = len(COUNTS)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (true - LOWEST, pred - LOWEST), 1)
    per_count = {c: (float(confusion[c - LOWEST, c - LOWEST] / confusion[c - LOWEST].sum())
                     if confusion[c - LOWEST].sum() else None) for c in COUNTS}
    return {"n": len(items), "accuracy": float(np.mean(true == pred)),
            "mad": float(np.mean(np.abs(true - pred))), "chance_accuracy": 1.0 / k,
            "confusion": confusion.tolist(), "per_count_accuracy": per_count,
            "predictions": [[item.source, int(t), int(p)] for item, t, p in zip(items, true, pred)]}
