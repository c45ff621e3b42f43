"""Protocols: few-shot and distribution-shift samplers, class-balanced sampling, run aggregation."""

import csv
import random
from collections import Counter

import pytest
import torch

from numclip.core.errors import NumclipError
from numclip.data.manifest import ManifestRow
from numclip.data.order import epoch_order
from numclip.data.samplers import (
    SampleReport,
    apply_sampler,
    class_balanced_weights,
    distribution_shift,
    few_shot,
)
from numclip.protocols import aggregate, results_markdown, write_results


def _rows(per_label: dict[int, int], split: str) -> list[ManifestRow]:
    return [ManifestRow(f"{split}/{label}/{i:03d}.png", label, split,
                        source_row=f"{split}:{label}:{i}")
            for label, n in per_label.items() for i in range(n)]


def _mixed(train: dict[int, int]) -> list[ManifestRow]:
    """Train, val and test rows interleaved, so positions of non-train rows are a real check."""
    rows = _rows(train, "train")
    others = _rows({0: 3, 1: 2}, "val") + _rows({0: 2, 2: 4}, "test")
    random.Random(0).shuffle(rows)
    for k, r in enumerate(others):
        rows.insert(3 * k, r)
    return rows


def _non_train(rows):
    return [r for r in rows if r.split != "train"]


def _is_subsequence(sub, full) -> bool:
    it = iter(full)
    return all(any(x is y for y in it) for x in sub)


def _train_counts(rows) -> Counter:
    return Counter(r.label for r in rows if r.split == "train")


def _train_paths(rows) -> set[str]:
    return {r.path for r in rows if r.split == "train"}


# --- few-shot -------------------------------------------------------------------------------------

def test_few_shot_counts_and_report():
    rows = _mixed({0: 20, 1: 9, 2: 3})
    out, report = few_shot(rows, shots=4, seed=1)
    assert _train_counts(out) == {0: 4, 1: 4, 2: 3}  # label 2 has fewer than 4: all kept
    assert isinstance(report, SampleReport)
    assert report.kind == "few_shot" and report.params == {"shots": 4, "seed": 1}
    assert report.kept_per_label == {0: 4, 1: 4, 2: 3}
    assert report.removed_per_label == {0: 16, 1: 5, 2: 0}
    assert report.selected_labels == [0, 1, 2]
    assert report.notes == ["label 2 has 3 training rows, fewer than shots=4: all kept"]
    assert report.as_dict()["kept_per_label"] == {"0": 4, "1": 4, "2": 3}


def test_few_shot_leaves_val_and_test_in_place():
    rows = _mixed({0: 20, 1: 9, 2: 3})
    out, _ = few_shot(rows, shots=2, seed=0)
    assert _non_train(out) == _non_train(rows)
    assert _is_subsequence(out, rows)  # input order kept, rows are the same objects
    kept = {id(r) for r in out}
    assert all(id(r) in kept for r in rows if r.split != "train")


def test_few_shot_seeded_order_free_and_nested():
    rows = _mixed({0: 30, 1: 30, 2: 30})
    a, _ = few_shot(rows, shots=4, seed=3)
    assert few_shot(rows, shots=4, seed=3)[0] == a
    assert _train_paths(few_shot(rows, shots=4, seed=4)[0]) != _train_paths(a)
    shuffled = list(rows)
    random.Random(9).shuffle(shuffled)
    assert _train_paths(few_shot(shuffled, shots=4, seed=3)[0]) == _train_paths(a)
    assert _train_paths(a) <= _train_paths(few_shot(rows, shots=8, seed=3)[0])  # 4-shot ⊂ 8-shot


def test_few_shot_label_draw_does_not_depend_on_other_labels():
    a, _ = few_shot(_rows({0: 30, 1: 30}, "train"), shots=5, seed=0)
    b, _ = few_shot(_rows({0: 30, 1: 30, 2: 30}, "train"), shots=5, seed=0)
    assert {r.path for r in a if r.label == 0} == {r.path for r in b if r.label == 0}


@pytest.mark.parametrize("shots", [0, -1, 2.5, True])
def test_few_shot_bad_shots(shots):
    with pytest.raises(NumclipError, match="shots"):
        few_shot(_mixed({0: 5}), shots=shots, seed=0)


def test_bad_seed_is_named():
    with pytest.raises(NumclipError, match="seed"):
        few_shot(_mixed({0: 5}), shots=1, seed=-1)
    with pytest.raises(NumclipError, match="seed"):
        distribution_shift(_mixed({0: 5}), top_k=1, keep_fraction=0.5, seed="a")


def test_no_training_rows_is_an_error():
    with pytest.raises(NumclipError, match="no training rows"):
        few_shot(_rows({0: 3}, "val"), shots=1, seed=0)
    with pytest.raises(NumclipError, match="no training rows"):
        distribution_shift(_rows({0: 3}, "test"), top_k=1, keep_fraction=0.2, seed=0)


# --- distribution shift ---------------------------------------------------------------------------

FREQ = {0: 50, 1: 10, 2: 37, 3: 10, 4: 4, 5: 23}  # ranked: 0 (50), 2 (37), 5 (23), 1 / 3 (10), 4


def test_distribution_shift_reduces_top_k_only():
    rows = _mixed(FREQ)
    out, report = distribution_shift(rows, top_k=3, keep_fraction=0.2, seed=0)
    # floor(50·0.2)=10, floor(37·0.2)=7, floor(23·0.2)=4; the rest untouched
    assert _train_counts(out) == {0: 10, 2: 7, 5: 4, 1: 10, 3: 10, 4: 4}
    assert report.selected_labels == [0, 2, 5]
    assert report.removed_per_label == {0: 40, 1: 0, 2: 30, 3: 0, 4: 0, 5: 19}
    assert report.params == {"top_k": 3, "keep_fraction": 0.2, "seed": 0}
    untouched = [r for r in rows if r.split == "train" and r.label in (1, 3, 4)]
    assert [r for r in out if r.split == "train" and r.label in (1, 3, 4)] == untouched
    assert _non_train(out) == _non_train(rows) and _is_subsequence(out, rows)


def test_distribution_shift_ties_go_to_the_lower_label_and_keep_at_least_one():
    out, report = distribution_shift(_mixed(FREQ), top_k=4, keep_fraction=0.05, seed=0)
    assert report.selected_labels == [0, 2, 5, 1]  # 1 and 3 tie at 10: 1 comes first
    # floor(50·0.05)=2, floor(37·0.05)=1, floor(23·0.05)=1, floor(10·0.05)=0 -> 1
    assert _train_counts(out) == {0: 2, 2: 1, 5: 1, 1: 1, 3: 10, 4: 4}


def test_distribution_shift_exact_fractions_and_whole_fraction():
    rows = _rows({0: 100, 1: 30}, "train")
    assert _train_counts(distribution_shift(rows, 2, 0.29, 0)[0]) == {0: 29, 1: 8}  # 0.29·100 = 29
    assert _train_counts(distribution_shift(rows, 2, 0.1, 0)[0]) == {0: 10, 1: 3}
    assert distribution_shift(rows, 2, 1.0, 0)[0] == rows


def test_distribution_shift_seeded_and_order_free():
    rows = _mixed(FREQ)
    a, _ = distribution_shift(rows, 2, 0.2, seed=5)
    assert distribution_shift(rows, 2, 0.2, seed=5)[0] == a
    assert _train_paths(distribution_shift(rows, 2, 0.2, seed=6)[0]) != _train_paths(a)
    shuffled = list(reversed(rows))
    assert _train_paths(distribution_shift(shuffled, 2, 0.2, seed=5)[0]) == _train_paths(a)


@pytest.mark.parametrize("top_k, frac, match", [
    (0, 0.2, "top_k"), (7, 0.2, "top_k must be <= the number of labels with training rows \\(6\\)"),
    (2, 0.0, "keep_fraction"), (2, 1.5, "keep_fraction"), (2, -0.1, "keep_fraction"),
])
def test_distribution_shift_bad_args(top_k, frac, match):
    with pytest.raises(NumclipError, match=match):
        distribution_shift(_mixed(FREQ), top_k=top_k, keep_fraction=frac, seed=0)


def test_apply_sampler_dispatches_and_names_unknown_kinds():
    rows = _mixed({0: 10, 1: 10})
    assert apply_sampler("few_shot", rows, shots=2, seed=0) == few_shot(rows, 2, 0)
    with pytest.raises(NumclipError, match="unknown sampler 'zero_shot'"):
        apply_sampler("zero_shot", rows)
    with pytest.raises(NumclipError, match="sampler 'few_shot'"):
        apply_sampler("few_shot", rows, shot=2, seed=0)


# --- class-balanced sampling ----------------------------------------------------------------------

def test_class_balanced_weights_sum_to_one_per_present_label():
    labels = [0] * 80 + [1] * 15 + [3] * 5  # label 2 absent
    w = class_balanced_weights(labels, num_ranks=4)
    lab = torch.tensor(labels)
    assert w.shape == (100,)
    for label in (0, 1, 3):
        assert w[lab == label].sum().item() == pytest.approx(1.0)
    assert w[0].item() == pytest.approx(1 / 80)


def test_class_balanced_weights_bad_labels():
    with pytest.raises(NumclipError, match="labels must lie in"):
        class_balanced_weights([0, 4], num_ranks=4)
    with pytest.raises(NumclipError, match="empty"):
        class_balanced_weights([], num_ranks=4)


def test_class_balanced_draws_are_balanced_and_seeded_per_epoch():
    labels = [0] * 80 + [1] * 15 + [3] * 5
    weights = class_balanced_weights(labels, 4)
    draws = [i for epoch in range(1, 301) for i in epoch_order(len(labels), 0, epoch, weights)]
    drawn = Counter(labels[i] for i in draws)
    assert set(drawn) == {0, 1, 3}  # the absent label gets nothing
    for label in (0, 1, 3):
        assert abs(drawn[label] / len(draws) - 1 / 3) < 0.03
    assert epoch_order(len(labels), 0, 1, weights) == draws[:100]  # a pure function of (seed, epoch)
    assert epoch_order(len(labels), 0, 2, weights) != draws[:100]
    assert epoch_order(len(labels), 1, 1, weights) != draws[:100]


# --- aggregation ----------------------------------------------------------------------------------

RUNS = [
    {"fold": 0, "seed": 1, "method": "ordinalclip", "metrics": {"mae": 2.0, "acc": 0.5}},
    {"fold": 1, "seed": 1, "method": "ordinalclip", "metrics": {"mae": 2.5, "acc": 0.7}},
    {"fold": 2, "seed": 1, "method": "ordinalclip", "metrics": {"mae": 3.0}},
    {"fold": None, "seed": 7, "method": "coop", "metrics": {"mae": 4.25, "acc": 0.4}},
]


def test_aggregate_mean_std_and_n():
    agg = aggregate(RUNS)
    assert list(agg) == ["ordinalclip", "coop"]
    ord_ = agg["ordinalclip"]
    assert ord_["n"] == 3
    assert ord_["metrics"]["mae"] == {"mean": 2.5, "std": 0.5, "n": 3}  # ddof=1
    acc = ord_["metrics"]["acc"]  # missing in one run: n=2, mean 0.6, std sqrt(0.02)
    assert acc["n"] == 2 and acc["mean"] == pytest.approx(0.6)
    assert acc["std"] == pytest.approx(0.1414213562373095)
    assert agg["coop"] == {"n": 1, "metrics": {"mae": {"mean": 4.25, "std": 0.0, "n": 1},
                                                "acc": {"mean": 0.4, "std": 0.0, "n": 1}}}


def test_aggregate_rejects_malformed_runs():
    with pytest.raises(NumclipError, match="run 1"):
        aggregate([RUNS[0], {"seed": 0, "metrics": {}}])


def test_results_markdown_exact():
    md = results_markdown(aggregate(RUNS), ["mae", "acc"])
    assert md.splitlines() == [
        "| method | n | mae (mean ± std) | acc (mean ± std) |",
        "|---|---|---|---|",
        "| ordinalclip | 3 | 2.500 ± 0.500 | 0.600 ± 0.141 (n=2) |",
        "| coop | 1 | 4.250 ± 0.000 | 0.400 ± 0.000 |",
    ]


def test_results_markdown_with_published():
    md = results_markdown(aggregate(RUNS), ["mae"], published={"ordinalclip": {"mae": 2.32}})
    assert md.splitlines() == [
        "| method | n | mae (mean ± std) | mae (published) |",
        "|---|---|---|---|",
        "| ordinalclip | 3 | 2.500 ± 0.500 | 2.32 |",
        "| coop | 1 | 4.250 ± 0.000 | – |",
    ]


def test_write_results(tmp_path):
    agg = aggregate(RUNS)
    paths = write_results(RUNS, agg, tmp_path / "out", ["mae"])
    with open(paths["runs"], newline="") as f:
        assert list(csv.reader(f)) == [
            ["fold", "seed", "method", "mae", "acc"],
            ["0", "1", "ordinalclip", "2.0", "0.5"],
            ["1", "1", "ordinalclip", "2.5", "0.7"],
            ["2", "1", "ordinalclip", "3.0", ""],
            ["", "7", "coop", "4.25", "0.4"],
        ]
    with open(paths["results"], newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["method", "metric", "n", "mean", "std"]
    assert rows[1] == ["ordinalclip", "mae", "3", "2.5", "0.5"]
    assert [r[:3] for r in rows[2:]] == [["ordinalclip", "acc", "2"], ["coop", "mae", "1"],
                                         ["coop", "acc", "1"]]
    assert paths["markdown"].read_text() == results_markdown(agg, ["mae"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.csv", "results.md",
                                                                    "runs.csv"]
