"""Split conformal rank intervals: the sets and scores against brute force over their definitions, and the
coverage guarantee on synthetic tasks whose true conditional distribution is known."""

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from numclip.evaluation.conformal import (
    calibrate,
    conformal_scores,
    coverage_curve,
    interval_report,
    prediction_intervals,
)

# ---- brute force, in exact arithmetic, straight from the definitions ---------------------------------------------


def _windows(p):
    """(width, start, mass) of every window, masses as exact fractions of the float probabilities."""
    exact = [Fraction(float(v)) for v in p]
    return [(w, a, sum(exact[a:a + w], Fraction(0))) for w in range(1, len(p) + 1) for a in range(len(p) - w + 1)]


def _shortest(p, admits):
    """Shortest window whose mass `admits`, max mass among the shortest, leftmost; all ranks if none does."""
    found = [(w, -m, a) for w, a, m in _windows(p) if admits(m)]
    if not found:
        return 0, len(p) - 1
    w, _, a = min(found)
    return a, a + w - 1


def brute_interval(p, q):
    q = Fraction(q) if math.isfinite(q) else None
    return _shortest(p, lambda m: q is not None and m > q)


def brute_score(p, y):
    """sup{lambda : y not in T_lambda}, T_lambda the shortest window with mass >= lambda (all ranks past the
    total). T_lambda only changes at window masses, so the sup is the largest candidate mass that misses y."""
    score = Fraction(0)
    for lam in {Fraction(0)} | {m for _, _, m in _windows(p)}:
        lo, hi = _shortest(p, lambda m, lam=lam: m >= lam)
        if not lo <= y <= hi:
            score = max(score, lam)
    return score


def _dyadic_probs(rng, n, k):
    """Multiples of 1/32 (exact in floats, so every sum is exact): zeros, ties and several modes."""
    counts = np.stack([rng.multinomial(32, rng.dirichlet(np.full(k, 0.4))) for _ in range(n)])
    return counts / 32.0


def _continuous_probs(rng, n, k):
    p = rng.dirichlet(np.full(k, 0.3), size=n)  # sparse and often multimodal
    p[rng.random((n, k)) < 0.1] = 0.0
    p[:, -1] += 1e-3
    return p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["dyadic", "continuous"])
def test_scores_match_brute_force(kind):
    rng = np.random.default_rng(1)
    for k in (1, 2, 5, 8):
        p = (_dyadic_probs if kind == "dyadic" else _continuous_probs)(rng, 40, k)
        y = rng.integers(0, k, size=40)
        got = conformal_scores(p, y)
        want = [float(brute_score(row, int(t))) for row, t in zip(p, y)]
        if kind == "dyadic":
            assert got.tolist() == want  # exact sums: bit for bit
        else:
            assert got == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("kind", ["dyadic", "continuous"])
def test_intervals_match_brute_force(kind):
    rng = np.random.default_rng(2)
    for k in (1, 2, 5, 8):
        p = (_dyadic_probs if kind == "dyadic" else _continuous_probs)(rng, 30, k)
        thresholds = [-0.5, 0.0, 0.3, 0.77, 0.999, 2.0, math.inf, *rng.random(4).tolist()]
        if kind == "dyadic":  # thresholds exactly at window masses (the total too): the strict > decides
            thresholds += [i / 32 for i in range(0, 33, 3)] + [1.0]
        for q in thresholds:
            lo, hi = prediction_intervals(p, q)
            assert lo.dtype == hi.dtype == np.int64
            assert np.all((0 <= lo) & (lo <= hi) & (hi <= k - 1))
            assert list(zip(lo.tolist(), hi.tolist())) == [brute_interval(row, q) for row in p], (k, q)


def test_threshold_inf_or_above_the_total_gives_all_ranks():
    p = np.random.default_rng(3).dirichlet(np.ones(6), size=50)
    for q in (math.inf, 1.0 + 1e-9, 5.0):
        lo, hi = prediction_intervals(p, q)
        assert lo.tolist() == [0] * 50 and hi.tolist() == [5] * 50
    lo, hi = prediction_intervals(p, -1.0)  # every window qualifies: the single most probable rank
    assert lo.tolist() == hi.tolist() == p.argmax(axis=1).tolist()
    assert [a.shape for a in prediction_intervals(np.zeros((0, 4)), 0.5)] == [(0,), (0,)]


def test_a_calibration_image_is_covered_at_its_own_score_and_missed_just_below_it():
    """The bit-for-bit agreement: at threshold s(x, y) the set holds y; a float below s (when s > 0) it does not,
    because the set is then exactly the window whose mass is s, which misses y."""
    rng = np.random.default_rng(4)
    p = _continuous_probs(rng, 2000, 9)
    y = rng.integers(0, 9, size=2000)
    scores = conformal_scores(p, y)
    assert np.all(scores >= 0) and np.any(scores > 0) and np.any(scores == 0)
    for i in range(2000):
        lo, hi = prediction_intervals(p[i:i + 1], scores[i])
        assert lo[0] <= y[i] <= hi[0]
        if scores[i] > 0:
            lo, hi = prediction_intervals(p[i:i + 1], np.nextafter(scores[i], -np.inf))
            assert not lo[0] <= y[i] <= hi[0]


def test_the_score_is_the_sup_on_a_multimodal_example():
    # p = [.25, 0, .25, .25, .25]. W_1 = {0} (.25, leftmost of four); W_2 = {2, 3} (.5); W_3 = {2, 3, 4} (.75);
    # W_4 = {0..3} (.75, leftmost of two), never chosen since M_4 = M_3; W_5 = all ranks.
    p = np.array([[0.25, 0.0, 0.25, 0.25, 0.25]] * 5)
    # y = 0: covered at lambda <= .25, dropped up to .75 (the inf, 0, would be invalid); the sup is .75.
    # y = 4: missed by W_1 and W_2, in W_3; W_4 misses it but is never a T_lambda, so .5, not .75.
    assert conformal_scores(p, [0, 1, 2, 3, 4]).tolist() == [0.75, 0.75, 0.25, 0.25, 0.5]
    lo, hi = prediction_intervals(p, 0.5)
    assert (lo[0], hi[0]) == (2, 4)  # above .5: W_3


def test_calibrate():
    scores = np.arange(1, 10) / 10.0  # n = 9
    assert calibrate(scores, 0.1) == pytest.approx(0.9)  # ceil(10 * 0.9) = 9th smallest
    assert calibrate(scores, 0.5) == pytest.approx(0.5)  # ceil(5) = 5th
    assert calibrate(scores[:8], 0.1) == math.inf  # ceil(9 * 0.9) = 9 > 8
    assert calibrate(np.arange(99.0)[::-1], 0.1) == 89.0  # ceil(100 * 0.9) = 90th smallest
    assert calibrate(scores, 0.7) == pytest.approx(0.3)  # 10 * (1 - 0.7) is 3.0000000000000004: still the 3rd
    assert calibrate([0.7], 0.6) == 0.7  # ceil(2 * 0.4) = 1
    assert calibrate([0.7], 0.4) == math.inf


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_calibrate_rejects_alpha(alpha):
    with pytest.raises(ValueError):
        calibrate([0.1, 0.2], alpha)


@pytest.mark.parametrize("scores", [[], [[0.1, 0.2]], [0.1, float("nan")]])
def test_calibrate_rejects_scores(scores):
    with pytest.raises(ValueError):
        calibrate(scores, 0.1)


def test_shape_errors():
    with pytest.raises(ValueError):
        conformal_scores([0.5, 0.5], [0])  # not [N, K]
    with pytest.raises(ValueError):
        conformal_scores([[0.5, 0.5]], [0, 1])  # lengths differ
    with pytest.raises(ValueError):
        conformal_scores([[0.5, 0.5]], [2])  # target out of range
    with pytest.raises(ValueError):
        conformal_scores([[2.0, -1.0]], [0])  # not probabilities
    with pytest.raises(ValueError):
        prediction_intervals([[0.5, 0.5]], float("nan"))
    with pytest.raises(ValueError):
        interval_report([1], [0], [0], 3)  # lo > hi
    with pytest.raises(ValueError):
        interval_report([0, 0], [1], [0], 3)
    with pytest.raises(ValueError):
        coverage_curve([[0.5, 0.5]], [0], [[0.2, 0.3, 0.5]], [0], [0.1])  # K differs


def test_interval_report():
    report = interval_report([0, 1, 2, 0, 3], [2, 1, 3, 0, 3], [1, 2, 3, 1, 3], num_ranks=5)
    assert report["n"] == 5
    assert report["coverage"] == pytest.approx(3 / 5)  # 1 in [0,2]; 2 not in [1,1]; 3 in [2,3]; 1 not in [0,0]
    assert report["mean_width"] == pytest.approx((3 + 1 + 2 + 1 + 1) / 5)
    assert report["per_rank_coverage"] == [None, 0.5, 0.0, 1.0, None]
    assert report["per_rank_width"] == [None, 2.0, 1.0, 1.5, None]
    assert report["per_rank_count"] == [0, 2, 1, 2, 0]
    json.dumps(report, allow_nan=False)


def test_coverage_curve_matches_direct_calls_and_is_json_safe():
    rng = np.random.default_rng(5)
    cal, test = _continuous_probs(rng, 30, 6), _continuous_probs(rng, 40, 6)
    cal_y, test_y = rng.integers(0, 6, size=30), rng.integers(0, 6, size=40)
    alphas = [0.02, 0.1, 0.3]  # 0.02: ceil(31 * 0.98) = 31 > 30 -> +inf, all ranks
    curve = coverage_curve(cal, cal_y, test, test_y, alphas)
    json.dumps(curve, allow_nan=False)
    assert curve["alpha"] == alphas and curve["nominal"] == pytest.approx([0.98, 0.9, 0.7])
    assert curve["threshold"][0] is None and curve["coverage"][0] == 1.0 and curve["mean_width"][0] == 6.0
    scores = conformal_scores(cal, cal_y)
    for i, alpha in enumerate(alphas[1:], start=1):
        q = calibrate(scores, alpha)
        report = interval_report(*prediction_intervals(test, q), test_y, 6)
        assert curve["threshold"][i] == q
        assert (curve["coverage"][i], curve["mean_width"][i]) == (report["coverage"], report["mean_width"])


# ---- coverage on synthetic tasks with a known conditional distribution --------------------------------------------

K = 10
SEEDS, N_CAL, N_TEST = 200, 500, 500


def _discretised_normal(mean, sigma):
    """P(clip(round(mean + sigma * eps), 0, K-1) = k) for each row of `mean` [M], as [M, K]."""
    edges = np.concatenate([[-np.inf], np.arange(K - 1) + 0.5, [np.inf]])
    cdf = stats.norm.cdf((edges[None, :] - mean[:, None]) / sigma)
    return np.diff(cdf, axis=1)


def _task(seed, sigma, bimodal=False):
    """Latent z, and true rank y ~ its discretised normal around z (or, bimodal, around z or z + 4, 50/50)."""
    rng = np.random.default_rng(seed)
    m = SEEDS * (N_CAL + N_TEST)
    z = rng.uniform(0, K - 1, size=m)
    centre = z + 4 * (rng.random(m) < 0.5) if bimodal else z
    y = np.clip(np.round(centre + sigma * rng.normal(size=m)), 0, K - 1).astype(np.int64)
    truth = _discretised_normal(z, sigma)
    if bimodal:
        truth = 0.5 * truth + 0.5 * _discretised_normal(z + 4, sigma)
    return z, y, truth


def _run(probs, y, alpha):
    """Per seed: calibrate on N_CAL images, return the test coverage [SEEDS] and mean width [SEEDS]."""
    probs = probs.reshape(SEEDS, N_CAL + N_TEST, K)
    y = y.reshape(SEEDS, N_CAL + N_TEST)
    scores = conformal_scores(probs[:, :N_CAL].reshape(-1, K), y[:, :N_CAL].ravel()).reshape(SEEDS, N_CAL)
    coverage, width = np.empty(SEEDS), np.empty(SEEDS)
    for s in range(SEEDS):
        lo, hi = prediction_intervals(probs[s, N_CAL:], calibrate(scores[s], alpha))
        t = y[s, N_CAL:]
        coverage[s] = np.mean((lo <= t) & (t <= hi))
        width[s] = np.mean(hi - lo + 1)
    return coverage, width


def _assert_conformal_coverage(coverage, alpha):
    """With continuous scores (ties only at 0, far below the quantile), a seed's covered test count is exactly
    BetaBinomial(N_TEST, k, N_CAL + 1 - k), k = ceil((N_CAL + 1)(1 - alpha)). Each seed must lie within its
    1e-5 / 1 - 1e-5 quantiles (Bonferroni: a false alarm somewhere among 200 seeds has probability < 0.4%);
    the mean over seeds within 4.5 standard errors of its expectation k / (N_CAL + 1), which lies in
    [1 - alpha, 1 - alpha + 1 / (N_CAL + 1))."""
    k = math.ceil((N_CAL + 1) * (1 - alpha) - 1e-9)
    law = stats.betabinom(N_TEST, k, N_CAL + 1 - k)
    low, high = law.ppf(1e-5) / N_TEST, law.ppf(1 - 1e-5) / N_TEST
    assert np.all((low <= coverage) & (coverage <= high)), (coverage.min(), coverage.max(), low, high)
    tolerance = 4.5 * law.std() / N_TEST / math.sqrt(SEEDS)
    assert 1 - alpha - tolerance <= coverage.mean() <= 1 - alpha + 1 / (N_CAL + 1) + tolerance
    assert abs(coverage.mean() - k / (N_CAL + 1)) <= tolerance


@pytest.mark.parametrize("alpha", [0.1, 0.25])
def test_coverage_with_the_true_distribution(alpha):
    _, y, truth = _task(10, sigma=1.0)
    coverage, _ = _run(truth, y, alpha)
    _assert_conformal_coverage(coverage, alpha)


def test_coverage_with_a_misspecified_model():
    z, y, _ = _task(11, sigma=1.0)
    coverage, _ = _run(_discretised_normal(z + 0.7, 2.5), y, 0.1)  # biased and too wide
    _assert_conformal_coverage(coverage, 0.1)


def test_coverage_on_a_bimodal_truth():
    """Multimodal p: the windows are not nested, which is where the sup score earns its keep."""
    _, y, truth = _task(12, sigma=0.7, bimodal=True)
    coverage, width = _run(truth, y, 0.1)
    _assert_conformal_coverage(coverage, 0.1)
    assert width.mean() > 4  # one window must span both modes, 4 ranks apart, to reach 90%


def test_width_shrinks_as_the_model_improves():
    z, y, _ = _task(13, sigma=1.0)
    _, sharp_y, sharp_truth = _task(13, sigma=0.4)
    sharp_cov, sharp_width = _run(sharp_truth, sharp_y, 0.1)
    cov, width = _run(_discretised_normal(z, 1.0), y, 0.1)  # the correct model at sigma = 1
    blurred_cov, blurred_width = _run(_discretised_normal(z, 3.0), y, 0.1)  # miscalibrated: far too wide
    biased_cov, biased_width = _run(_discretised_normal(z + 1.5, 1.0), y, 0.1)  # miscalibrated: shifted
    uniform_cov, uniform_width = _run(np.full((y.size, K), 1.0 / K), y, 0.1)  # uninformative
    for c in (sharp_cov, cov, blurred_cov, biased_cov, uniform_cov):
        assert c.mean() >= 0.9 - 0.005  # the same (valid) coverage for all ...
    # ... at very different widths: a sharper truth is easier, and the correct model beats the wrong ones.
    assert sharp_width.mean() < width.mean() < min(blurred_width.mean(), biased_width.mean(), uniform_width.mean())
    assert width.mean() < 4.0 and uniform_width.mean() > 8.0
