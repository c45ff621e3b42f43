"""Split conformal prediction of contiguous rank intervals: [lo, hi] per image, covering the true rank
with probability >= 1 - alpha over calibration and test draws, whatever the model and the data.

The sets. For an image with rank probabilities p over K ordered ranks, W_w is the maximum-mass window of
w consecutive ranks (leftmost on ties) and M_w its mass; M_w never decreases with w. For a level lambda
the set T_lambda is the shortest window with mass >= lambda, the max-mass one among the shortest, leftmost
on ties: W_w for the smallest w with M_w >= lambda (all ranks when lambda exceeds M_K).

The score. A labelled image scores s(x, y) = sup{lambda : y not in T_lambda}: the largest M_w whose
window W_w misses y and is ever chosen (M_w > M_{w-1}, M_0 = 0), or 0 when y lies in every chosen window.
Then y is in T_lambda for EVERY lambda > s. The test set with threshold q is the shortest window with mass
strictly greater than q, which is T_lambda for lambda = that window's mass > q; so s <= q implies y is in
it, and q = the ceil((n + 1)(1 - alpha))-th smallest of n exchangeable calibration scores gives coverage
>= 1 - alpha.

Why the sup and not the inf. The usual score is the smallest level at which y is covered,
inf{lambda : y in T_lambda}; it is valid only when the sets are nested (T_lambda grows with lambda), so
that y, once covered, stays covered at the larger test threshold. For a unimodal p without ties the
windows are nested and the two scores coincide. For a multimodal p (or ties broken to the left on a
plateau) they are not: W_1 can be the left mode and W_2 a pair around the right one, so y can be
covered at one level, dropped at a higher one, and covered again. The inf would then let the test
threshold land where y is dropped and break the guarantee; the sup is the last level at which y is
dropped, so the guarantee holds, with contiguous sets, for any p.

Calibration and test read window masses as the same differences c[b] - c[a] of the same float64 prefix
sums c, so a calibration image's set at its own score and a test set agree bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from numclip.evaluation.metrics import as_probs_and_labels, as_rank_labels, as_rank_probs

# (n + 1)(1 - alpha) is rounded in float; an integer that comes out a few ulps above itself (10 * (1 - 0.7)
# is 3.0000000000000004) must not add one more calibration score. Relative, far below any alpha anyone types.
_RANK_SLACK = 1e-9


def _prefix_sums(p: np.ndarray) -> np.ndarray:
    """c [N, K + 1] with c[:, 0] = 0 and c[:, b] = p[:, :b].sum(); the mass of ranks a..b-1 is c[b] - c[a]."""
    c = np.zeros((p.shape[0], p.shape[1] + 1))
    np.cumsum(p, axis=1, out=c[:, 1:])
    return c


def conformal_scores(probs: Any, targets: Any) -> np.ndarray:
    """Calibration scores s(x, y) [N] (float64, >= 0) of labelled images: the largest mass M_w of a chosen
    window W_w that misses y, 0 if none does. O(N K^2) time (a loop over widths), O(N K) memory."""
    p, y = as_probs_and_labels(probs, targets, name="targets")
    n, k = p.shape
    c = _prefix_sums(p)
    rows = np.arange(n)
    score = np.zeros(n)
    previous = np.zeros(n)  # M_{w-1}, with M_0 = 0
    for w in range(1, k + 1):
        mass = c[:, w:] - c[:, : k + 1 - w]  # [N, K - w + 1]: windows a..a+w-1 for a = 0..K-w
        start = mass.argmax(axis=1)  # leftmost on ties
        best = mass[rows, start]
        chosen = best > previous  # W_w is T_lambda for lambda in (M_{w-1}, M_w]
        misses = (y < start) | (y >= start + w)
        score = np.where(chosen & misses, best, score)  # M_w never decreases: the last miss is the largest
        previous = best
    return score


def calibrate(scores: Any, alpha: float) -> float:
    """The conformal threshold: the ceil((n + 1)(1 - alpha))-th smallest score, or +inf when that exceeds n
    (too few calibration images for this alpha: every set is then all ranks)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)) \
            or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size < 1:
        raise ValueError(f"scores must be 1-D with at least one calibration score, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores hold NaN or infinite values")
    level = (s.size + 1) * (1.0 - float(alpha))
    rank = max(1, math.ceil(level * (1.0 - _RANK_SLACK)))
    if rank > s.size:
        return math.inf
    return float(np.partition(s, rank - 1)[rank - 1])


def prediction_intervals(probs: Any, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Rank intervals (lo [N], hi [N], int64, inclusive): per image the shortest window with mass strictly
    greater than `threshold` (max mass among the shortest, leftmost on ties), or [0, K-1] when none is.

    For each start a, a vectorised bisection finds the first end b with c[b] - c[a] > threshold (masses only
    grow with b), O(N K log K). It evaluates exactly the differences `conformal_scores` compares, which a
    searchsorted over offset rows would not: adding the row offsets rounds.
    """
    p = as_rank_probs(probs)
    q = float(threshold)
    if math.isnan(q):
        raise ValueError("threshold is NaN")
    n, k = p.shape
    lo = np.zeros(n, dtype=np.int64)
    hi = np.full(n, k - 1, dtype=np.int64)
    if n == 0 or q == math.inf:
        return lo, hi
    c = _prefix_sums(p)
    starts = np.arange(k)
    c_start = c[:, :k]  # c[a]
    # Search b in [a + 1, K + 1]; K + 1 means no window starting at a exceeds the threshold.
    low = np.broadcast_to(starts + 1, (n, k)).copy()
    high = np.full((n, k), k + 1)
    while True:
        active = low < high
        if not active.any():
            break
        mid = (low + high) // 2  # <= K wherever active
        above = active & (np.take_along_axis(c, np.minimum(mid, k), axis=1) - c_start > q)
        high = np.where(above, mid, high)
        low = np.where(active & ~above, mid + 1, low)
    width = low - starts  # window a..low-1, where low <= K
    width = np.where(low <= k, width, k + 1)
    shortest = width.min(axis=1)
    found = shortest <= k
    end = np.minimum(starts + shortest[:, None], k)
    mass = np.where(width == shortest[:, None], np.take_along_axis(c, end, axis=1) - c_start, -np.inf)
    first = mass.argmax(axis=1)  # max mass among the shortest, leftmost on ties: exactly W_w
    lo = np.where(found, first, 0)
    hi = np.where(found, first + shortest - 1, k - 1)
    return lo.astype(np.int64), hi.astype(np.int64)


def interval_report(lo: Any, hi: Any, targets: Any, num_ranks: int) -> dict[str, Any]:
    """Coverage and width (hi - lo + 1) of rank intervals, overall and per true rank.

    `per_rank_coverage[k]` and `per_rank_width[k]` are over images whose true rank is k (None if none):
    the guarantee is marginal, and this shows where the misses go (typically to the rare extreme ranks).
    """
    if num_ranks < 1:
        raise ValueError(f"num_ranks must be >= 1, got {num_ranks}")
    low = as_rank_labels("lo", lo, num_ranks)
    high = as_rank_labels("hi", hi, num_ranks)
    y = as_rank_labels("targets", targets, num_ranks)
    if not (low.size == high.size == y.size):
        raise ValueError(f"lengths differ: lo {low.size}, hi {high.size}, targets {y.size}")
    if y.size == 0:
        raise ValueError("no intervals to report")
    if np.any(low > high):
        raise ValueError("every interval needs lo <= hi")
    covered = ((low <= y) & (y <= high)).astype(np.float64)
    width = (high - low + 1).astype(np.float64)
    counts = np.bincount(y, minlength=num_ranks)
    covered_sums = np.bincount(y, weights=covered, minlength=num_ranks)
    width_sums = np.bincount(y, weights=width, minlength=num_ranks)
    return {
        "n": int(y.size),
        "coverage": float(covered.mean()),
        "mean_width": float(width.mean()),
        "per_rank_coverage": [float(s / c) if c else None for s, c in zip(covered_sums, counts)],
        "per_rank_width": [float(s / c) if c else None for s, c in zip(width_sums, counts)],
        "per_rank_count": [int(c) for c in counts],
    }


def coverage_curve(
    cal_probs: Any, cal_targets: Any, test_probs: Any, test_targets: Any, alphas: Any
) -> dict[str, list[Any]]:
    """Empirical test coverage and mean width per nominal level, one calibration for all levels (a figure's
    columns). `threshold[i]` is None where it is +inf (too few calibration images: all ranks)."""
    cal_p, cal_y = as_probs_and_labels(cal_probs, cal_targets, name="targets")
    test_p, test_y = as_probs_and_labels(test_probs, test_targets, name="targets")
    if test_p.shape[1] != cal_p.shape[1]:
        raise ValueError(f"calibration has {cal_p.shape[1]} ranks, test has {test_p.shape[1]}")
    if test_y.size == 0:
        raise ValueError("no test images")
    levels = [float(a) for a in np.atleast_1d(np.asarray(alphas, dtype=np.float64))]
    scores = conformal_scores(cal_p, cal_y)
    out: dict[str, list[Any]] = {"alpha": [], "nominal": [], "threshold": [], "coverage": [], "mean_width": []}
    for alpha in levels:
        q = calibrate(scores, alpha)
        report = interval_report(*prediction_intervals(test_p, q), test_y, test_p.shape[1])
        out["alpha"].append(alpha)
        out["nominal"].append(1.0 - alpha)
        out["threshold"].append(None if math.isinf(q) else q)
        out["coverage"].append(report["coverage"])
        out["mean_width"].append(report["mean_width"])
    return out
