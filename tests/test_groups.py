"""Per-group aggregation against a direct per-group loop and hand-counted cases."""

import json
import math
from collections import Counter

import numpy as np
import pytest

from numclip.evaluation.groups import aggregate_groups
from numclip.evaluation.metrics import ordinal_metrics


def _majority(labels):
    counts = Counter(labels)
    best = max(counts.values())
    return min(label for label, c in counts.items() if c == best)


def _reference(groups, targets, argmax, expectation, num_ranks, how):
    members = {}
    for i, g in enumerate(groups):
        if g is not None:
            members.setdefault(g, []).append(i)
    out = {"groups": [], "target": [], "rank": [], "value": [], "count": [], "mixed": 0}
    for g in sorted(members):
        idx = members[g]
        labels = [int(targets[i]) for i in idx]
        if how == "majority":
            rank = _majority([int(argmax[i]) for i in idx])
            value = float(rank)
        else:
            values = sorted(float(expectation[i]) for i in idx)
            if how == "mean":
                value = sum(values) / len(values)
            else:
                m = len(values)
                value = values[m // 2] if m % 2 else (values[m // 2 - 1] + values[m // 2]) / 2
            rank = min(max(math.floor(value + 0.5), 0), num_ranks - 1)
        out["groups"].append(g)
        out["target"].append(_majority(labels))
        out["rank"].append(rank)
        out["value"].append(value)
        out["count"].append(len(idx))
        out["mixed"] += len(set(labels)) > 1
    return out


@pytest.mark.parametrize("how", ["mean", "median", "majority"])
@pytest.mark.parametrize("seed", range(3))
def test_matches_a_per_group_loop(how, seed):
    rng = np.random.default_rng(seed)
    n, k = 300, 6
    names = [f"person{i:02d}" for i in rng.permutation(40)]
    groups = [None if rng.random() < 0.1 else names[int(rng.integers(0, 40))] for _ in range(n)]
    targets = rng.integers(0, k, size=n)
    argmax = np.clip(targets + rng.integers(-1, 2, size=n), 0, k - 1)
    expectation = rng.uniform(-0.8, k - 0.2, size=n)  # some round below 0 or above K-1: clipped
    expectation[:20] = np.round(expectation[:20] * 2) / 2  # exact halves: rounded up
    got = aggregate_groups(groups, targets, argmax, expectation, k, how=how)
    want = _reference(groups, targets, argmax, expectation, k, how)
    assert got["how"] == how
    assert got["groups"] == want["groups"] and got["groups"] == sorted(got["groups"])
    assert got["target"] == want["target"]
    assert got["rank"] == want["rank"]
    assert got["value"] == pytest.approx(want["value"])
    assert got["count"] == want["count"]
    assert got["mixed_label_groups"] == want["mixed"]
    assert got["ungrouped"] == sum(g is None for g in groups)
    json.dumps(got, allow_nan=False)
    ordinal_metrics(got["target"], got["rank"], got["value"], k)  # what the caller does with it


def test_hand_counted():
    groups = ["b", "a", "b", None, "a", "b", "c", "a"]
    targets = [2, 1, 3, 0, 2, 3, 0, 1]
    argmax = [2, 1, 3, 4, 2, 2, 0, 2]
    expectation = [2.2, 0.6, 3.0, 4.0, 2.4, 2.5, -0.6, 1.5]
    # a: images 1, 4, 7 (labels 1, 2, 1 -> 1, mixed); b: 0, 2, 5 (labels 2, 3, 3 -> 3, mixed); c: 6 (label 0).
    mean = aggregate_groups(groups, targets, argmax, expectation, 5, how="mean")
    assert mean["groups"] == ["a", "b", "c"]
    assert mean["target"] == [1, 3, 0]
    assert mean["value"] == pytest.approx([1.5, 7.7 / 3, -0.6])
    assert mean["rank"] == [2, 3, 0]  # 1.5 rounds half up; 2.567 -> 3; -0.6 -> -1 clipped to 0
    assert mean["count"] == [3, 3, 1] and mean["mixed_label_groups"] == 2 and mean["ungrouped"] == 1
    median = aggregate_groups(groups, targets, argmax, expectation, 5, how="median")
    assert median["value"] == pytest.approx([1.5, 2.5, -0.6]) and median["rank"] == [2, 3, 0]
    majority = aggregate_groups(groups, targets, argmax, expectation, 5, how="majority")
    assert majority["rank"] == [2, 2, 0]  # a: argmax 1, 2, 2; b: 2, 3, 2; c: 0
    assert majority["value"] == [2.0, 2.0, 0.0]


def test_ties_go_to_the_smaller_rank_and_even_medians_average():
    out = aggregate_groups(["g"] * 4, [3, 1, 1, 3], [0, 4, 4, 0], [1.0, 2.0, 4.0, 3.0], 5, how="majority")
    assert out["target"] == [1] and out["rank"] == [0]
    out = aggregate_groups(["g"] * 4, [3, 1, 1, 3], [0, 4, 4, 0], [1.0, 2.0, 4.0, 3.0], 5, how="median")
    assert out["value"] == [2.5] and out["rank"] == [3]


def test_all_ungrouped():
    out = aggregate_groups([None, None], [0, 1], [0, 1], [0.0, 1.0], 3)
    assert out["groups"] == [] and out["target"] == [] and out["count"] == [] and out["ungrouped"] == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"how": "mode"},
        {"groups": ["a", "b"]},  # lengths differ
        {"groups": ["a", 3, "b"]},  # not a string id
        {"groups": [["a"], ["b"], ["c"]]},  # not 1-D
        {"targets": [0, 1, 5]},  # out of range
        {"argmax": [0, 1.5, 2]},
        {"expectation": [0.0, float("nan"), 1.0]},
        {"num_ranks": 0},
    ],
)
def test_rejects_bad_input(kwargs):
    args = {"groups": ["a", "b", "a"], "targets": [0, 1, 2], "argmax": [0, 1, 2], "expectation": [0.0, 1.0, 2.0],
            "num_ranks": 3, **kwargs}
    with pytest.raises(ValueError):
        aggregate_groups(**args)
