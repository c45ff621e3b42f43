"""Split assignment: given splits kept, val carved from train only, stratified seeded splits."""

from collections import Counter

import pytest

from numclip.config import SplitConfig
from numclip.core.errors import NumclipError
from numclip.data.manifest import ManifestRow
from numclip.data.splits import assign_splits


def _rows(per_label: dict[int, int], split: str = "") -> list[ManifestRow]:
    return [ManifestRow(f"{split or 'x'}/{label}/{i:03d}.png", label, split)
            for label, n in per_label.items() for i in range(n)]


def test_complete_splits_unchanged():
    rows = _rows({0: 4}, "train") + _rows({0: 2}, "val") + _rows({1: 3}, "test")
    assert assign_splits(rows, SplitConfig()) == rows


def test_val_carved_from_train_never_from_test():
    train, test = _rows({0: 40, 1: 20, 2: 3, 3: 1}, "train"), _rows({0: 10, 1: 10, 2: 10}, "test")
    out = assign_splits(train + test, SplitConfig(train=0.6, val=0.2, test=0.2))
    assert out[len(train):] == test  # test rows untouched, order kept
    assert [r.path for r in out[:len(train)]] == [r.path for r in train]
    val = [r for r in out if r.split == "val"]
    assert not {r.path for r in val} & {r.path for r in test}
    assert Counter(r.label for r in val) == {0: 10, 1: 5, 2: 1}  # 0.2 / (0.6 + 0.2) of each label
    assert assign_splits(train + test, SplitConfig(train=0.6, val=0.2, test=0.2)) == out


def test_stratified_split_when_no_row_has_one():
    rows = _rows({0: 100, 1: 20, 2: 3, 3: 2, 4: 1})
    out = assign_splits(rows, SplitConfig(seed=7))
    assert [r.path for r in out] == [r.path for r in rows]
    by = Counter((r.label, r.split) for r in out)
    assert (by[0, "train"], by[0, "val"], by[0, "test"]) == (70, 15, 15)
    assert (by[1, "train"], by[1, "val"], by[1, "test"]) == (14, 3, 3)
    assert (by[2, "train"], by[2, "val"], by[2, "test"]) == (1, 1, 1)  # >= 3 images: in every split
    assert by[3, "train"] == 2 and by[4, "train"] == 1  # too few to split: kept for training
    assert assign_splits(rows, SplitConfig(seed=7)) == out
    assert assign_splits(rows, SplitConfig(seed=8)) != out
    assert assign_splits(list(reversed(rows)), SplitConfig(seed=7)) == list(reversed(out))


def test_mixed_split_and_no_split_is_an_error():
    rows = _rows({0: 5}, "train") + _rows({0: 3})
    with pytest.raises(NumclipError, match="3 of 8 rows have no split"):
        assign_splits(rows, SplitConfig())
