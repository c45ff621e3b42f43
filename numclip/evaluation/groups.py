"""Per-group aggregation: several images of one subject (a person, a scene) read out as one prediction.

A group's images share an id. Their predictions are pooled into one rank and one value, and their labels
into one target, so `ordinal_metrics(out["target"], out["rank"], out["value"], K)` scores groups as it
scores images. Images without a group (id None) are left out.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from numclip.evaluation.metrics import as_rank_labels

HOW = ("mean", "median", "majority")


def _group_ids(groups: Any) -> list[str | None]:
    array = np.asarray(groups, dtype=object)
    if array.ndim != 1:
        raise ValueError(f"groups must be 1-D, got shape {array.shape}")
    ids = array.tolist()
    bad = [g for g in ids if g is not None and not isinstance(g, str)]
    if bad:
        raise ValueError(f"group ids must be strings or None, got {bad[0]!r}")
    return ids


def _votes(group: np.ndarray, labels: np.ndarray, num_groups: int, num_ranks: int) -> np.ndarray:
    """How many of each group's images carry each label, [G, K]."""
    flat = np.bincount(group * num_ranks + labels, minlength=num_groups * num_ranks)
    return flat.reshape(num_groups, num_ranks)


def _median(group: np.ndarray, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Median per group [G] (even counts: the mean of the two middle values), all groups at once."""
    ordered = values[np.lexsort((values, group))]  # by group, then by value
    first = np.cumsum(counts) - counts
    return 0.5 * (ordered[first + (counts - 1) // 2] + ordered[first + counts // 2])


def aggregate_groups(
    groups: Any,
    targets: Any | None,
    argmax: Any,
    expectation: Any,
    num_ranks: int,
    how: Literal["mean", "median", "majority"] = "mean",
) -> dict[str, Any]:
    """One prediction per group from per-image read-outs.

    - `how="mean"` / `"median"`: the group's `value` is the mean / median of its images' continuous
      prediction (`expectation`); its `rank` is that value rounded half up (floor(v + 0.5)) and clipped to
      [0, K-1], as `ordinal_metrics` rounds the expectation.
    - `how="majority"`: the group's `rank` is the most frequent argmax (ties: the smaller rank) and its
      `value` is that rank.
    The group's `target` is its most frequent label (ties: the smaller). Returns lists over groups sorted
    by id: `groups`, `target`, `rank`, `value`, `count` (images), plus `mixed_label_groups` (groups whose
    images disagree on the label), `ungrouped` (images left out) and `how`. With `targets` None (unlabelled
    images, `numclip predict`) there is no `target` nor `mixed_label_groups`.
    """
    if how not in HOW:
        raise ValueError(f"how must be one of {HOW}, got {how!r}")
    if num_ranks < 1:
        raise ValueError(f"num_ranks must be >= 1, got {num_ranks}")
    ids = _group_ids(groups)
    arg = as_rank_labels("argmax", argmax, num_ranks)
    y = arg if targets is None else as_rank_labels("targets", targets, num_ranks)  # unlabelled: predict
    expect = np.asarray(expectation, dtype=np.float64)
    if expect.ndim != 1:
        raise ValueError(f"expectation must be 1-D, got shape {expect.shape}")
    if not (len(ids) == y.size == arg.size == expect.size):
        raise ValueError(
            f"lengths differ: groups {len(ids)}, targets {y.size}, argmax {arg.size}, expectation {expect.size}")
    if not np.all(np.isfinite(expect)):
        raise ValueError("expectation holds NaN or infinite values")

    keep = np.array([g is not None for g in ids], dtype=bool)
    names = sorted({g for g in ids if g is not None})
    index = {name: i for i, name in enumerate(names)}
    group = np.array([index[g] for g in ids if g is not None], dtype=np.int64)
    y, arg, expect = y[keep], arg[keep], expect[keep]
    num_groups = len(names)
    counts = np.bincount(group, minlength=num_groups)
    label_votes = _votes(group, y, num_groups, num_ranks)
    target = label_votes.argmax(axis=1)  # ties: the smaller label
    if how == "majority":
        rank = _votes(group, arg, num_groups, num_ranks).argmax(axis=1)  # ties: the smaller rank
        value = rank.astype(np.float64)
    else:
        if how == "mean":
            value = np.bincount(group, weights=expect, minlength=num_groups) / counts  # every group has an image
        else:
            value = _median(group, expect, counts)
        rank = np.clip(np.floor(value + 0.5), 0, num_ranks - 1).astype(np.int64)
    out = {
        "how": how,
        "groups": names,
        "target": [int(t) for t in target],
        "rank": [int(r) for r in rank],
        "value": [float(v) for v in value],
        "count": [int(c) for c in counts],
        "mixed_label_groups": int(((label_votes > 0).sum(axis=1) > 1).sum()),
        "ungrouped": int((~keep).sum()),
    }
    if targets is None:
        del out["target"], out["mixed_label_groups"]
    return out
