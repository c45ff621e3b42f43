"""Does count-awareness cost anything else? Zero-shot choice of the other words of a caption.

The counting loss only ever contrasts captions that differ in their number, so it could blur what
CLIP knows about the rest. Here each image's caption is rewritten with every word of a vocabulary
(the synthetic data's colours, then its shapes) and the most similar caption must keep the true
word: the same read-out as CountBench, on what the counting loss never trained.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import torch

from numclip.counting.countbench import choose_captions
from numclip.data.manifest import Manifest
from numclip.models.backbone import Backbone


def word_choices(caption: str, words: list[str]) -> Optional[tuple[list[str], int]]:
    """The caption rewritten with each of `words` (a plural 's' kept), and the index of its own word;
    None unless exactly one word of the vocabulary occurs in it."""
    pattern = re.compile(rf"\b({'|'.join(map(re.escape, words))})(s?)\b")
    found = list(pattern.finditer(caption))
    if len(found) != 1:
        return None
    m = found[0]
    options = [caption[:m.start()] + w + m.group(2) + caption[m.end():] for w in words]
    return options, words.index(m.group(1))


def attribute_accuracy(backbone: Backbone, manifest: Manifest, split: str, words: list[str],
                       device: torch.device | str, batch_size: int) -> Optional[dict[str, Any]]:
    """Accuracy of choosing the caption's own word among `words`; None when no caption has one."""
    images, options, truth = [], [], []
    for row in manifest.split(split):
        choice = word_choices(row.caption or "", words)
        if choice is not None:
            images.append(manifest.abs_path(row))
            options.append(choice[0])
            truth.append(choice[1])
    if not images or len(words) < 2:
        return None
    chosen = choose_captions(backbone, images, options, device, batch_size)
    correct = sum(c == t for c, t in zip(chosen, truth))
    return {"n": len(images), "accuracy": correct / len(images), "chance_accuracy": 1 / len(words)}
