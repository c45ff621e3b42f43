"""Metrics and prototype ordinality against hand-counted values."""

import json
import math

import numpy as np
import pytest
import torch

from numclip.evaluation.metrics import (
    calibration_bins,
    distribution_metrics,
    median_rank,
    ordinal_metrics,
    prototype_ordinality,
    similarity_matrix,
)

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


# ---- distribution_metrics: metrics of the rank probabilities [N, K] --------------------------------------------

# K = 4, rank 3 never a target (but predicted once). Argmax 0, 1, 2, 3; errors 0, 1, 0, 2.
DIST_TARGET = np.array([0, 2, 2, 1])
DIST_PROBS = np.array([
    [0.7, 0.2, 0.1, 0.0],
    [0.2, 0.5, 0.3, 0.0],
    [0.1, 0.3, 0.6, 0.0],
    [0.1, 0.1, 0.2, 0.6],
])


def test_distribution_metrics_hand_computed():
    m = distribution_metrics(DIST_TARGET, DIST_PROBS, num_ranks=4, cs_ks=(0, 1, 2))
    assert m["n"] == 4
    # Expectations 0.4, 1.1, 1.5, 2.3. Pairs: (0,1) (0,2) (0,3) concordant, (1,3) (2,3) discordant, (1,2) tied in y:
    # tau-b = (3 - 2) / sqrt((6 - 1) * (6 - 0)).
    assert m["kendall_tau"] == pytest.approx(1 / math.sqrt(30))
    assert m["balanced_accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)  # recall of ranks 0, 1, 2; 3 is no target
    # F1 = 2TP / (2TP + FP + FN): rank 0: 1; rank 1: 0 (FP r1, FN r3); rank 2: 2/3; rank 3: 0 (FP r3).
    assert m["macro_f1"] == pytest.approx((1 + 0 + 2 / 3 + 0) / 4)
    assert m["cs"] == pytest.approx({0: 0.5, 1: 0.75, 2: 1.0})
    # Medians (first cumulative >= 1/2): 0, 1, 2, 3 against targets 0, 2, 2, 1.
    assert m["mae_median"] == pytest.approx((0 + 1 + 0 + 2) / 4)
    # Confidences .7 (right, bin 10), .5 (wrong, bin 7), .6 and .6 (right and wrong, bin 8: (8/15, 9/15]).
    assert m["ece"] == pytest.approx((0.3 + 0.5 + 2 * 0.1) / 4)
    assert m["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.6) + math.log(0.1)) / 4)
    # (CDF - 1[y <= k])^2 summed: .09 + .01; .04 + .49; .01 + .16; .01 + .64 + .36.
    assert m["rps"] == pytest.approx((0.10 + 0.53 + 0.17 + 1.01) / 4)
    json.dumps(m, allow_nan=False)


def test_a_given_rank_read_out_replaces_the_argmax():
    """NumCLIP's rank is its regressor's, not the argmax of the spread distribution: the point metrics follow it,
    the distribution's (ECE, NLL, RPS, median) do not."""
    own = distribution_metrics(DIST_TARGET, DIST_PROBS, num_ranks=4)
    given = distribution_metrics(DIST_TARGET, DIST_PROBS, num_ranks=4, pred_rank=DIST_TARGET)
    assert given["balanced_accuracy"] == given["macro_f1"] == given["cs"][0] == 1.0
    assert all(given[k] == own[k] for k in ("ece", "nll", "rps", "mae_median", "kendall_tau"))
    with pytest.raises(ValueError, match="pred_rank"):
        distribution_metrics(DIST_TARGET, DIST_PROBS, num_ranks=4, pred_rank=[0, 1])


def test_perfect_predictor():
    y = np.array([0, 1, 1, 3, 4, 4, 4])
    m = distribution_metrics(y, np.eye(5)[y], num_ranks=5, cs_ks=(0, 3))
    assert m["ece"] == 0.0 and m["rps"] == 0.0 and m["nll"] == 0.0 and m["mae_median"] == 0.0
    assert m["balanced_accuracy"] == 1.0 and m["macro_f1"] == 1.0 and m["cs"] == {0: 1.0, 3: 1.0}
    assert m["kendall_tau"] == pytest.approx(1.0)


def test_uniform_probabilities():
    y = np.array([0, 1, 2, 3, 3])
    m = distribution_metrics(y, np.full((5, 4), 0.25), num_ranks=4, cs_ks=(1,))
    assert m["kendall_tau"] is None  # constant expectation
    # Argmax ties go to rank 0: right once of 5, at confidence 1/4 (bin 3: (3/15, 4/15]).
    assert m["balanced_accuracy"] == pytest.approx(0.25)  # recall 1 for rank 0, 0 for ranks 1-3
    assert m["macro_f1"] == pytest.approx((2 / 6 + 0 + 0 + 0) / 4)  # rank 0: TP 1, FP 4
    assert m["cs"] == {1: pytest.approx(0.4)}
    assert m["ece"] == pytest.approx(abs(0.2 - 0.25))
    assert m["nll"] == pytest.approx(math.log(4))
    assert m["mae_median"] == pytest.approx((1 + 0 + 1 + 2 + 2) / 5)  # cumulative .25, .5: median 1 (lower rank)
    # CDF .25 .5 .75 1: y=0 -> .5625 + .25 + .0625; y=1 -> .0625 + .25 + .0625; y=2 same; y=3 as y=0.
    assert m["rps"] == pytest.approx((0.875 + 0.375 + 0.375 + 0.875 + 0.875) / 5)


def test_rps_of_a_one_hot_prediction_is_the_absolute_error():
    pred = np.array([0, 4, 2, 1])
    y = np.array([3, 0, 2, 2])
    assert distribution_metrics(y, np.eye(5)[pred], num_ranks=5)["rps"] == pytest.approx(np.abs(pred - y).mean())


def test_nll_is_floored():
    m = distribution_metrics([1], [[1.0, 0.0]], num_ranks=2)
    assert m["nll"] == pytest.approx(-math.log(1e-12))
    assert m["kendall_tau"] is None  # one sample


def _reference_metrics(y, p, ks, num_bins):
    """Loops over images, ranks, pairs and bins, written from the definitions."""
    n, k = p.shape
    arg = [int(np.argmax(row)) for row in p]
    expect = [sum(j * row[j] for j in range(k)) for row in p]
    concordant = discordant = ties_y = ties_e = 0
    for i in range(n):
        for j in range(i + 1, n):
            dy, de = y[i] - y[j], expect[i] - expect[j]
            ties_y += dy == 0
            ties_e += de == 0
            if dy * de > 0:
                concordant += 1
            elif dy * de < 0:
                discordant += 1
    pairs = n * (n - 1) / 2
    tau = (concordant - discordant) / math.sqrt((pairs - ties_y) * (pairs - ties_e))
    recalls, f1s = [], []
    for r in range(k):
        tp = sum(1 for i in range(n) if y[i] == r and arg[i] == r)
        fp = sum(1 for i in range(n) if y[i] != r and arg[i] == r)
        fn = sum(1 for i in range(n) if y[i] == r and arg[i] != r)
        if tp + fn:
            recalls.append(tp / (tp + fn))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    medians = []
    for row in p:
        total = 0.0
        for j in range(k):
            total += row[j]
            if total >= 0.5 - 1e-9:
                medians.append(j)
                break
    ece = 0.0
    for b in range(num_bins):
        low, high = b / num_bins, (b + 1) / num_bins
        members = [i for i in range(n) if (low < p[i].max() <= high) or (b == 0 and p[i].max() == 0)]
        if members:
            acc = sum(arg[i] == y[i] for i in members) / len(members)
            conf = sum(p[i].max() for i in members) / len(members)
            ece += len(members) / n * abs(acc - conf)
    rps = sum(sum((sum(p[i][: j + 1]) - (y[i] <= j)) ** 2 for j in range(k)) for i in range(n)) / n
    return {
        "kendall_tau": tau,
        "balanced_accuracy": sum(recalls) / len(recalls),
        "macro_f1": sum(f1s) / len(f1s),
        "cs": {c: sum(abs(arg[i] - y[i]) <= c for i in range(n)) / n for c in ks},
        "mae_median": sum(abs(medians[i] - y[i]) for i in range(n)) / n,
        "ece": ece,
        "nll": -sum(math.log(max(p[i][y[i]], 1e-12)) for i in range(n)) / n,
        "rps": rps,
    }


@pytest.mark.parametrize("seed", range(4))
def test_distribution_metrics_match_loops(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 9))
    n = int(rng.integers(5, 60))
    logits = rng.normal(scale=3.0, size=(n, k))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    p[rng.random((n, k)) < 0.15] = 0.0  # exact zeros, some p_y = 0 (the NLL floor)
    p[:, 0] += 1e-3
    p /= p.sum(axis=1, keepdims=True)
    y = rng.integers(0, k - 1, size=n)  # rank K-1 is never a target
    ks = (0, 1, 3)
    got = distribution_metrics(y, p, num_ranks=k, cs_ks=ks, num_bins=7)
    want = _reference_metrics(y.tolist(), p, ks, num_bins=7)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    json.dumps(got, allow_nan=False)


def test_median_rank():
    p = np.array([
        [0.5, 0.5, 0.0],  # exactly half at rank 0: the lower rank
        [0.2, 0.2, 0.6],
        [0.0, 0.0, 1.0],
        [0.0, 0.6, 0.4],
    ])
    assert median_rank(p).tolist() == [0, 2, 2, 1]
    # 0.1 + 0.35 + 0.05 sums to 0.49999999999999994 in floats: still a half, so the median is rank 2, not 3.
    assert median_rank(np.array([[0.1, 0.35, 0.05, 0.5]])).tolist() == [2]
    assert median_rank(np.array([[0.3, 0.1, 0.4, 0.2]])).tolist() == [2]  # cumulative .3 .4 .8
    assert median_rank(np.zeros((0, 3))).shape == (0,)
    assert median_rank([[1.0]]).dtype == np.int64


def test_calibration_bins():
    bins = calibration_bins(DIST_TARGET, DIST_PROBS, num_bins=5)  # confidences .7, .5, .6, .6
    assert bins["edges"] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert bins["count"] == [0, 0, 3, 1, 0]  # bins are closed on the right: .5, .6, .6 in (.4, .6]; .7 in (.6, .8]
    assert bins["confidence"][2] == pytest.approx(1.7 / 3) and bins["accuracy"][2] == pytest.approx(1 / 3)
    assert bins["confidence"][3] == pytest.approx(0.7) and bins["accuracy"][3] == 1.0
    assert bins["confidence"][0] is None and bins["accuracy"][4] is None
    json.dumps(bins, allow_nan=False)


@pytest.mark.parametrize(
    "target, probs, kwargs",
    [
        ([0, 1], [0.5, 0.5], {}),  # not 2-D
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], {"num_ranks": 3}),  # K differs from num_ranks
        ([0, 1], [[1.5, -0.5], [0.5, 0.5]], {}),  # negative
        ([0, 1], [[float("nan"), 1.0], [0.5, 0.5]], {}),
        ([0, 1], [[2.0, 3.0], [0.5, 0.5]], {}),  # logits, not probabilities
        ([0, 1, 1], [[0.5, 0.5], [0.5, 0.5]], {}),  # lengths differ
        ([0, 2], [[0.5, 0.5], [0.5, 0.5]], {}),  # target out of range
        ([], np.zeros((0, 2)), {}),  # no samples
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], {"cs_ks": (-1,)}),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], {"num_bins": 0}),
    ],
)
def test_distribution_metrics_rejects_bad_input(target, probs, kwargs):
    kwargs = {"num_ranks": 2, **kwargs}
    with pytest.raises(ValueError):
        distribution_metrics(target, probs, **kwargs)
