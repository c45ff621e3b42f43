"""Warnings that a model learned nothing, from the metrics every stage already computes.

A run that ends at chance still exits 0 and writes a tidy comparison table; these checks make that
loud (in the stage output, the metrics file and the comparison table) and say what to try.
"""

from __future__ import annotations

import math
import sys
from typing import Any

ONE_CLASS_SHARE = 0.9  # a model predicting one rank for this share of images has collapsed
NOISE_SIGMAS = 2.0  # accuracy within this many binomial standard deviations of chance is noise

TRAIN_HINT = ("try more epochs (train.epochs), a larger learning rate (train.lr), or a backbone with a "
              "real prior (metrics/pretrain.json: zero-shot accuracy after pretraining)")
PRETRAIN_HINT = ("pretrain longer (pretrain.epochs; `numclip init` sizes it to the data), check the "
                 "prompt (task.zeroshot_template, task.rank_words), or start from real CLIP weights "
                 "(model.pretrained)")


def chance_accuracy(num_ranks: int) -> float:
    return 1.0 / num_ranks


def learning_warnings(metrics: dict[str, Any], num_ranks: int, what: str) -> list[str]:
    """Short warnings for `metrics` (ordinal_metrics of one split: accuracy, n, confusion), each naming
    `what` was measured; [] when the model learned something."""
    n, accuracy, confusion = metrics["n"], metrics["accuracy"], metrics["confusion"]
    if not n:
        return []
    warnings = []
    predicted = [sum(row[k] for row in confusion) for k in range(num_ranks)]
    actual = [sum(row) for row in confusion]
    top = max(range(num_ranks), key=predicted.__getitem__)
    share = predicted[top] / n
    if share >= ONE_CLASS_SHARE and max(actual) / n < ONE_CLASS_SHARE:
        warnings.append(f"{what} predicts rank {top} for {share:.0%} of {n} images (one class)")
    chance = chance_accuracy(num_ranks)
    noise = NOISE_SIGMAS * math.sqrt(chance * (1 - chance) / n)
    if accuracy <= chance + noise:
        warnings.append(f"{what} accuracy {accuracy:.3f} is within noise of chance ({chance:.3f} "
                        f"+- {noise:.3f}, {n} images)")
    return warnings


def report(warnings: list[str], hint: str) -> None:
    """Say each warning loudly, on stderr, with what to try."""
    for text in warnings:
        print(f"WARNING: {text}: the model learned nothing; {hint}", file=sys.stderr)
