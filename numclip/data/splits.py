"""Train/val/test assignment that respects a source's own splits and never leaks test rows.

Given splits are kept; a missing val is carved out of train only; a source with no splits is split
stratified by label with the configured fractions. Rows are ordered by path within each label before
the seeded shuffle, so the result depends on the data and the seed, not on the source's row order.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np

from numclip.config import SplitConfig
from numclip.core.errors import NumclipError
from numclip.data.manifest import Candidate, ManifestRow

MIN_PER_LABEL = 3  # a label with at least this many rows gets at least one row in every split


def _round(x: float) -> int:
    return int(x + 0.5)


def _sizes(n: int, val: float, test: float) -> tuple[int, int]:
    """(n_val, n_test) for one label of n rows; the rest is train. A zero fraction stays zero."""
    if n < MIN_PER_LABEL:
        return 0, 0
    n_val, n_test = (max(1, _round(n * f)) if f > 0 else 0 for f in (val, test))
    while n - n_val - n_test < 1:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def _by_label(rows: list[ManifestRow], indices: list[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i in sorted(indices, key=lambda i: rows[i].path):
        groups[rows[i].label].append(i)
    return groups


def _stratified(rows: list[ManifestRow], indices: list[int], val: float, test: float,
                seed: int) -> dict[int, str]:
    """New split per row index: per label, the first n_test shuffled rows test, the next n_val val."""
    rng = np.random.default_rng(seed)
    out = {}
    for _, members in sorted(_by_label(rows, indices).items()):
        n_val, n_test = _sizes(len(members), val, test)
        order = [members[j] for j in rng.permutation(len(members))]
        for k, i in enumerate(order):
            out[i] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return out


def assign_splits(rows: list[ManifestRow], cfg: SplitConfig) -> list[ManifestRow]:
    """Rows with `split` set (see the module docstring for the cases); deterministic for cfg.seed."""
    unsplit = [i for i, r in enumerate(rows) if not r.split]
    if unsplit and len(unsplit) < len(rows):
        raise NumclipError(f"{len(unsplit)} of {len(rows)} rows have no split: give every row a split "
                           "(train/val/test) or none, and data.split fractions assign them all")
    if unsplit:
        new = _stratified(rows, unsplit, cfg.val, cfg.test, cfg.seed)
    elif any(r.split == "val" for r in rows):
        return list(rows)
    else:  # carve val from train only: test rows stay where the source put them
        train = [i for i, r in enumerate(rows) if r.split == "train"]
        new = _stratified(rows, train, cfg.val / (cfg.train + cfg.val), 0.0, cfg.seed)
    return [dataclasses.replace(r, split=new[i]) if i in new else r for i, r in enumerate(rows)]


def _fold_of(c: Candidate) -> int | None:
    try:
        return None if c.fold is None or str(c.fold).strip() == "" else int(float(str(c.fold)))
    except ValueError:
        return None  # validation rejects it with its reason


def select_fold(candidates: list[Candidate], fold: int) -> list[Candidate]:
    """The rows of one fold of a k-fold protocol (data.fold), before validation.

    Rows of fold `fold` that carry their own split (an importer's per-fold lists: HCI's 10 splits,
    Adience's test_fold_is_<f> lists) are the whole data of that fold. Otherwise fold `fold` is the
    test set and every other fold is train, from which val is carved (Adience's official folds).
    """
    mine = [c for c in candidates if _fold_of(c) == fold]
    if not mine:
        folds = sorted({f for f in map(_fold_of, candidates) if f is not None})
        raise NumclipError(f"data.fold {fold}: no row has fold {fold} (folds present: "
                           f"{', '.join(map(str, folds)) or 'none: the source has no fold column'})")
    if all(c.split for c in mine):
        return mine
    if any(c.split for c in mine):
        raise NumclipError(f"data.fold {fold}: some rows of the fold have a split and some do not; give "
                           "every row of a fold its split, or none")
    others = [c for c in candidates if _fold_of(c) != fold]
    return ([dataclasses.replace(c, split="test") for c in mine]
            + [dataclasses.replace(c, split="train") for c in others])
