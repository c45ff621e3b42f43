"""Metrics and prototype ordinality against hand-counted values."""

import json
import math

import numpy as np
import pytest
import torch

from numclip.evaluation.metrics import ordinal_metrics, prototype_ordinality, similarity_matrix

TARGET = np.array([0, 1, 2, 3, 3])
ARGMAX = np.array([0, 2, 2, 1, 3])
EXPECT = np.array([0.2, 1.6, 2.0, 1.4, 2.4])


def test_ordinal_metrics_hand_computed():
    m = ordinal_metrics(TARGET, ARGMAX, EXPECT, num_ranks=4)
    assert m["n"] == 5
    assert m["mae_argmax"] == pytest.approx(3 / 5)  # errors 0, 1, 0, 2, 0
    assert m["mae_expectation"] == pytest.approx(3.0 / 5)  # 0.2, 0.6, 0, 1.6, 0.6
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["accuracy_expectation"] == pytest.approx(2 / 5)  # rounded: 0, 2, 2, 1, 2
    assert m["off_by_one"] == pytest.approx(4 / 5)
    # Ranks: target [1, 2, 3, 4.5, 4.5], expectation [1, 3, 4, 2, 5] -> 5.5 / sqrt(9.5 * 10)
    assert m["spearman"] == pytest.approx(5.5 / math.sqrt(95))
    assert m["per_rank_mae"] == pytest.approx([0.0, 1.0, 0.0, 1.0])
    assert m["per_rank_count"] == [1, 1, 1, 2]
    assert m["confusion"] == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 1, 0, 1]]
    json.dumps(m, allow_nan=False)  # plain Python, no NaN


def test_missing_rank_and_clipped_expectation():
    # K = 4 but rank 2 never occurs; expectation -0.7 rounds to -1 -> clipped to 0, 5.2 -> 5 -> clipped to 3.
    m = ordinal_metrics([0, 3, 1], [0, 3, 0], [-0.7, 5.2, 1.49], num_ranks=4)
    assert m["accuracy_expectation"] == pytest.approx(1.0)
    assert m["per_rank_mae"] == [0.0, 1.0, None, 0.0]
    assert m["per_rank_count"] == [1, 1, 0, 1]


def test_spearman_none_when_undefined():
    m = ordinal_metrics([0, 1, 2], [1, 1, 1], [1.0, 1.0, 1.0], num_ranks=3)
    assert m["spearman"] is None
    assert ordinal_metrics([1, 1], [0, 2], [0.5, 1.5], num_ranks=3)["spearman"] is None
    assert ordinal_metrics([1], [1], [1.0], num_ranks=3)["spearman"] is None
    json.dumps(m, allow_nan=False)


@pytest.mark.parametrize(
    "target, argmax, expect",
    [
        ([0, 1], [0, 1, 1], [0.0, 1.0]),  # length mismatch
        ([0, 4], [0, 1], [0.0, 1.0]),  # target out of range
        ([0, 1], [0, -1], [0.0, 1.0]),  # prediction out of range
        ([0, 1.5], [0, 1], [0.0, 1.0]),  # not an integer label
        ([[0, 1]], [[0, 1]], [[0.0, 1.0]]),  # not 1-D
        ([0, 1], [0, 1], [0.0, float("nan")]),
        ([], [], []),
    ],
)
def test_ordinal_metrics_rejects_bad_input(target, argmax, expect):
    with pytest.raises(ValueError):
        ordinal_metrics(target, argmax, expect, num_ranks=4)


def test_ordinality_perfect_on_an_arc():
    # Unit vectors at monotone angles spanning less than pi: cosine falls with every step apart.
    angles = np.linspace(0.0, 0.9 * math.pi, 12)
    arc = np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.linspace(1, 5, 12)[:, None]
    result = prototype_ordinality(arc)
    assert result["overall"] == 1.0
    assert result["per_span"] == {span: 1.0 for span in range(1, 12)}


def test_ordinality_hand_counted():
    # t0 = (1, 0), t1 = (0, 1), t2 = (1, 1) scaled by 10, t3 = (-1, 0).
    # Cosines: S01 = 0, S02 = .707, S03 = -1, S12 = .707, S13 = 0, S23 = -.707.
    # (i, j): (0,0) 1 > 0 yes [span 1]; (0,1) 0 > .707 no [2]; (0,2) .707 > -1 yes [3];
    #         (1,1) 1 > .707 yes [1];   (1,2) .707 > 0 yes [2];
    #         (2,2) 1 > -.707 yes [1].  -> 5 of 6.
    # Without row normalisation (1,1) would fail: 1 > 10 * .707 * sqrt(2) is false.
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [10.0, 10.0], [-1.0, 0.0]])
    result = prototype_ordinality(protos)
    assert result["overall"] == pytest.approx(5 / 6)
    assert result["per_span"] == pytest.approx({1: 1.0, 2: 0.5, 3: 1.0})
    json.dumps(result, allow_nan=False)


def test_ordinality_needs_two_prototypes():
    with pytest.raises(ValueError):
        prototype_ordinality(np.ones((1, 3)))


def test_similarity_matrix_is_cosine():
    s = similarity_matrix(np.array([[2.0, 0.0], [3.0, 3.0], [0.0, 0.0]]))
    h = 1 / math.sqrt(2)
    assert s == pytest.approx(np.array([[1.0, h, 0.0], [h, 1.0, 0.0], [0.0, 0.0, 0.0]]))
