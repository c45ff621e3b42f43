"""Training-set samplers for the published protocols (docs/protocols.md); val/test rows never touched.

Every draw is seeded and independent of the input row order: within a label, training rows are
sorted by (path, source_row) and permuted by a generator seeded with (seed, label), so a label's
draw does not depend on the other labels either. The kept rows are a prefix of that permutation,
hence nested: with one seed, the 4-shot set is a subset of the 8-shot set, and a distribution-shift
subset of a label is a subset of any larger one. The output keeps the input's order (kept rows only), and
each sampler returns a `SampleReport` for the run's metadata.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from numclip.core.errors import NumclipError
from numclip.data.manifest import ManifestRow

_EPS = 1e-9  # n * keep_fraction: 0.29 * 100 is 28.999..., which must floor to 29


@dataclass(frozen=True)
class SampleReport:
    """What a sampler did, for the run's metadata: inputs (seed included) and per-label outcome.

    `kept_per_label`/`removed_per_label` cover every label that has training rows; `selected_labels`
    are the labels the sampler reduced (few-shot: all of them; distribution shift: the top_k).
    """

    kind: str
    params: dict[str, Any]
    kept_per_label: dict[int, int]
    removed_per_label: dict[int, int]
    selected_labels: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (label keys become strings, as JSON would make them anyway)."""
        d = dataclasses.asdict(self)
        for key in ("kept_per_label", "removed_per_label"):
            d[key] = {str(k): v for k, v in d[key].items()}
        return d


def _train_by_label(rows: Sequence[ManifestRow]) -> dict[int, list[int]]:
    """Indices of training rows per label, each list sorted by (path, source_row): order-free."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i in sorted((i for i, r in enumerate(rows) if r.split == "train"),
                    key=lambda i: (rows[i].path, rows[i].source_row)):
        groups[rows[i].label].append(i)
    if not groups:
        raise NumclipError("rows: no training rows to sample from (every row is val or test)")
    return dict(sorted(groups.items()))


def _draw(members: list[int], keep: int, seed: int, label: int) -> list[int]:
    """The first `keep` of a permutation seeded by (seed, label): nested in `keep`."""
    order = np.random.default_rng([seed, label]).permutation(len(members))
    return [members[j] for j in order[:keep]]


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise NumclipError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise NumclipError(f"{name} must be {bound}, got {value}")
    return int(value)


def _subsample(rows: Sequence[ManifestRow], groups: dict[int, list[int]], keep: dict[int, int],
               seed: int) -> tuple[list[ManifestRow], dict[int, int], dict[int, int]]:
    """Drop training rows of the labels in `keep` down to keep[label]; everything else stays."""
    dropped: set[int] = set()
    for label, n in keep.items():
        chosen = set(_draw(groups[label], n, seed, label))
        dropped.update(i for i in groups[label] if i not in chosen)
    out = [r for i, r in enumerate(rows) if i not in dropped]
    kept = {label: min(keep.get(label, len(m)), len(m)) for label, m in groups.items()}
    removed = {label: len(m) - kept[label] for label, m in groups.items()}
    return out, kept, removed


def few_shot(rows: Sequence[ManifestRow], shots: int,
             seed: int) -> tuple[list[ManifestRow], SampleReport]:
    """Keep `shots` training rows per label (all of a label's rows if it has fewer; noted in the
    report). Published: shots in {1, 2, 4, 8, 16, 32, 64}; any shots >= 1 works. Non-train rows
    are kept unchanged.
    """
    shots, seed = _check_int("shots", shots, 1), _check_int("seed", seed, 0)
    groups = _train_by_label(rows)
    out, kept, removed = _subsample(rows, groups, dict.fromkeys(groups, shots), seed)
    notes = [f"label {label} has {len(m)} training rows, fewer than shots={shots}: all kept"
             for label, m in groups.items() if len(m) < shots]
    report = SampleReport("few_shot", {"shots": shots, "seed": seed}, kept, removed,
                          list(groups), notes)
    return out, report


def top_labels(rows: Sequence[ManifestRow], top_k: int) -> list[int]:
    """The top_k labels by training-row count, most frequent first; ties go to the lower label."""
    counts = Counter(r.label for r in rows if r.split == "train")
    return sorted(counts, key=lambda label: (-counts[label], label))[:top_k]


def distribution_shift(rows: Sequence[ManifestRow], top_k: int, keep_fraction: float,
                       seed: int) -> tuple[list[ManifestRow], SampleReport]:
    """Keep max(floor(n·keep_fraction), 1) training rows of each of the top_k most frequent labels.

    The papers' "10-80" is top_k=10, 80 % removed, i.e. keep_fraction=0.2. Labels are those with
    training rows; other labels and all val/test rows are unchanged.
    """
    seed = _check_int("seed", seed, 0)
    groups = _train_by_label(rows)
    if isinstance(top_k, (int, np.integer)) and not isinstance(top_k, bool) and top_k > len(groups):
        raise NumclipError(f"top_k must be <= the number of labels with training rows "
                           f"({len(groups)}), got {top_k}")
    top_k = _check_int("top_k", top_k, 1)
    if isinstance(keep_fraction, bool) or not isinstance(keep_fraction, (int, float)) \
            or not 0 < keep_fraction <= 1:
        raise NumclipError(f"keep_fraction must be in (0, 1] (the share of rows kept, e.g. 0.2 for "
                           f"80 % removed), got {keep_fraction!r}")
    top = top_labels(rows, top_k)
    keep = {label: max(math.floor(len(groups[label]) * keep_fraction + _EPS), 1) for label in top}
    out, kept, removed = _subsample(rows, groups, keep, seed)
    notes = [f"top {top_k} labels by training rows cut to {keep_fraction:g} of their rows: {top}"]
    params = {"top_k": top_k, "keep_fraction": float(keep_fraction), "seed": seed}
    return out, SampleReport("distribution_shift", params, kept, removed, top, notes)


SAMPLERS: dict[str, Callable[..., tuple[list[ManifestRow], SampleReport]]] = {
    "few_shot": few_shot,
    "distribution_shift": distribution_shift,
}


def apply_sampler(kind: str, rows: Sequence[ManifestRow],
                  **params: Any) -> tuple[list[ManifestRow], SampleReport]:
    """Dispatch by name, so a protocol can be named in params and recorded as (kind, params)."""
    if kind not in SAMPLERS:
        raise NumclipError(f"unknown sampler '{kind}': use one of {', '.join(SAMPLERS)}")
    try:
        return SAMPLERS[kind](rows, **params)
    except TypeError as e:
        raise NumclipError(f"sampler '{kind}': {e}") from None


def class_balanced_weights(labels: Sequence[int], num_ranks: int) -> torch.Tensor:
    """Per-sample weights 1/count(label): each present label weighs 1 in all, absent labels 0."""
    num_ranks = _check_int("num_ranks", num_ranks, 1)
    lab = torch.as_tensor(list(labels), dtype=torch.long)
    if lab.numel() == 0:
        raise NumclipError("labels: empty, nothing to weight")
    if lab.min() < 0 or lab.max() >= num_ranks:
        raise NumclipError(f"labels must lie in [0, {num_ranks}), got {lab.min()}..{lab.max()}")
    counts = torch.bincount(lab, minlength=num_ranks).to(torch.float64)
    return 1.0 / counts[lab]
