"""Evaluation metrics (docs/methods.md, Metrics): numpy in, plain JSON-serialisable Python out.

Undefined values are reported as None, never NaN, so metrics files stay valid JSON.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

# Rows of a probability matrix must sum to 1 within this: float32 softmax rows are off by ~1e-6; logits or
# unnormalised scores passed by mistake are off by far more.
ROW_SUM_TOLERANCE = 1e-3
MEDIAN_SLACK = 1e-9  # relative: a cumulative mass that is one half up to float rounding counts as reaching it
NLL_FLOOR = 1e-12  # p_y is clipped here before the log, so one confident miss costs ~27.6 nats, not infinity


def as_rank_labels(name: str, values: Any, num_ranks: int) -> np.ndarray:
    """Integer rank indices [N] in 0..num_ranks-1 as int64; a ValueError naming `name` otherwise."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size and not np.all(np.equal(np.mod(array, 1), 0)):
        raise ValueError(f"{name} must hold integer rank indices")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= num_ranks):
        raise ValueError(f"{name} must lie in [0, {num_ranks - 1}], got [{array.min()}, {array.max()}]")
    return array


def as_rank_probs(probs: Any, num_ranks: int | None = None) -> np.ndarray:
    """Rank probabilities [N, K] as float64, checked: 2-D, finite, non-negative, rows summing to 1.

    A ValueError says which check failed, so logits passed by mistake are caught here, not read as probabilities.
    """
    array = np.asarray(probs, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 1:
        raise ValueError(f"probs must be [N, K] with K >= 1, got shape {array.shape}")
    if num_ranks is not None and array.shape[1] != num_ranks:
        raise ValueError(f"probs has {array.shape[1]} columns, expected num_ranks = {num_ranks}")
    if not np.all(np.isfinite(array)):
        raise ValueError("probs hold NaN or infinite values")
    if array.size and array.min() < 0:
        raise ValueError(f"probs must be non-negative, got a minimum of {array.min()}")
    sums = array.sum(axis=1)
    if sums.size and np.max(np.abs(sums - 1.0)) > ROW_SUM_TOLERANCE:
        worst = int(np.argmax(np.abs(sums - 1.0)))
        raise ValueError(f"probs rows must sum to 1 (within {ROW_SUM_TOLERANCE}); row {worst} sums to {sums[worst]}")
    return array


def _correlation_undefined(a: np.ndarray, b: np.ndarray) -> bool:
    # Undefined for fewer than two samples or a constant side; checked up front to avoid scipy warnings.
    return a.size < 2 or bool(np.all(a == a[0])) or bool(np.all(b == b[0]))


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if _correlation_undefined(a, b):
        return None
    from scipy import stats  # a second of import time, paid only by what computes a correlation

    rho = float(stats.spearmanr(a, b).statistic)
    return rho if np.isfinite(rho) else None


def ordinal_metrics(
    target: Any, pred_argmax: Any, pred_expectation: Any, num_ranks: int
) -> dict[str, Any]:
    """MAE, accuracy, CS@1, Spearman, per-rank MAE and confusion for one evaluation split.

    `accuracy_expectation` rounds the expectation half up (floor(x + 0.5)) and clips it to [0, K-1].
    `per_rank_mae[k]` is the mean |argmax - y| over samples whose true rank is k (None if there are none).
    `confusion[true][predicted]` counts argmax predictions.
    """
    if num_ranks < 1:
        raise ValueError(f"num_ranks must be >= 1, got {num_ranks}")
    y = as_rank_labels("target", target, num_ranks)
    arg = as_rank_labels("pred_argmax", pred_argmax, num_ranks)
    expect = np.asarray(pred_expectation, dtype=np.float64)
    if expect.ndim != 1:
        raise ValueError(f"pred_expectation must be 1-D, got shape {expect.shape}")
    if not (y.size == arg.size == expect.size):
        raise ValueError(f"lengths differ: target {y.size}, pred_argmax {arg.size}, pred_expectation {expect.size}")
    if y.size == 0:
        raise ValueError("no samples to evaluate")
    if not np.all(np.isfinite(expect)):
        raise ValueError("pred_expectation holds NaN or infinite values")

    arg_err = np.abs(arg - y)
    rounded = np.clip(np.floor(expect + 0.5), 0, num_ranks - 1).astype(np.int64)
    counts = np.bincount(y, minlength=num_ranks)
    err_sums = np.bincount(y, weights=arg_err, minlength=num_ranks)
    confusion = np.bincount(y * num_ranks + arg, minlength=num_ranks * num_ranks).reshape(num_ranks, num_ranks)
    return {
        "n": int(y.size),
        "mae_argmax": float(arg_err.mean()),
        "mae_expectation": float(np.abs(expect - y).mean()),
        "accuracy": float((arg == y).mean()),
        "accuracy_expectation": float((rounded == y).mean()),
        "off_by_one": float((arg_err <= 1).mean()),
        "spearman": _spearman(y.astype(np.float64), expect),
        "per_rank_mae": [float(s / c) if c else None for s, c in zip(err_sums, counts)],
        "per_rank_count": [int(c) for c in counts],
        "confusion": confusion.tolist(),
    }


def median_rank(probs: Any) -> np.ndarray:
    """The median read-out [N] (int64): the smallest rank k whose cumulative probability is >= 1/2.

    Unlike the expectation it is always a rank and is not pulled by a far tail; unlike argmax it reads the
    ordering of the ranks. The half is taken of the row's own total and loosened by MEDIAN_SLACK (relative),
    so a cumulative mass of exactly 1/2 (0.25 + 0.25) reaches it despite rounding: such ties go to the lower rank.
    """
    p = as_rank_probs(probs)
    cumulative = np.cumsum(p, axis=1)
    half = 0.5 * cumulative[:, -1:] * (1.0 - MEDIAN_SLACK)
    return np.argmax(cumulative >= half, axis=1).astype(np.int64)


def _top_label_bins(y: np.ndarray, p: np.ndarray, num_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Bin b holds confidences in (b/M, (b+1)/M] (the first bin also takes 0); a confidence a rounding above 1
    # goes to the last bin. Returns per-bin count, sum of confidences and number of correct argmax predictions.
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(index, minlength=num_bins)
    confidence_sum = np.bincount(index, weights=confidence, minlength=num_bins)
    return count, confidence_sum, np.bincount(index, weights=correct, minlength=num_bins)


def as_probs_and_labels(probs: Any, target: Any, num_ranks: int | None = None,
                        name: str = "target") -> tuple[np.ndarray, np.ndarray]:
    """`as_rank_probs` [N, K] and `as_rank_labels` [N] of the same images (ValueError if N differs)."""
    p = as_rank_probs(probs, num_ranks)
    y = as_rank_labels(name, target, p.shape[1])
    if y.size != p.shape[0]:
        raise ValueError(f"lengths differ: {name} {y.size}, probs {p.shape[0]}")
    return p, y


def _check_bins(num_bins: int) -> None:
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be an integer >= 1, got {num_bins!r}")


def calibration_bins(target: Any, probs: Any, num_bins: int = 15) -> dict[str, Any]:
    """Reliability diagram of the argmax confidence (max_k p_k) against argmax accuracy, M equal-width bins.

    Bin b covers (b/M, (b+1)/M] (bin 0 also takes 0). Per bin: `count`, mean `confidence` and `accuracy`
    (None for an empty bin); `edges` has M + 1 entries. `distribution_metrics`' ECE is the count-weighted
    mean |accuracy - confidence| of these bins.
    """
    _check_bins(num_bins)
    p, y = as_probs_and_labels(probs, target)
    count, conf_sum, correct_sum = _top_label_bins(y, p, num_bins)
    return {
        "edges": np.linspace(0.0, 1.0, num_bins + 1).tolist(),
        "count": [int(c) for c in count],
        "confidence": [float(s / c) if c else None for s, c in zip(conf_sum, count)],
        "accuracy": [float(s / c) if c else None for s, c in zip(correct_sum, count)],
    }


def _kendall_tau(a: np.ndarray, b: np.ndarray) -> float | None:
    # Tau-b, which corrects for ties (every rank label is a tie group).
    if _correlation_undefined(a, b):
        return None
    from scipy import stats  # a second of import time, paid only by what computes a correlation

    tau = float(stats.kendalltau(a, b).statistic)
    return tau if np.isfinite(tau) else None


def _macro_f1(y: np.ndarray, pred: np.ndarray, num_ranks: int) -> float:
    # F1_k = 2 TP / (2 TP + FP + FN) over the ranks seen in targets or predictions (others have no TP/FP/FN).
    tp = np.bincount(y[pred == y], minlength=num_ranks).astype(np.float64)
    in_target = np.bincount(y, minlength=num_ranks)
    in_pred = np.bincount(pred, minlength=num_ranks)
    seen = (in_target + in_pred) > 0
    f1 = 2 * tp[seen] / (in_target[seen] + in_pred[seen])  # 2TP + FP + FN = |target = k| + |pred = k|
    return float(f1.mean())


def distribution_metrics(
    target: Any, probs: Any, num_ranks: int, cs_ks: Iterable[int] = (0, 1, 2), num_bins: int = 15,
    pred_rank: Any = None,
) -> dict[str, Any]:
    """Metrics that need the whole rank distribution p [N, K], not just two read-outs of it.

    - `kendall_tau`: Kendall's tau-b of the target with the expectation sum_k k p_k (None when undefined:
      fewer than two samples or a constant side).
    - `balanced_accuracy`: argmax recall averaged over the ranks present in the targets, so rare ranks
      count as much as common ones; `macro_f1`: argmax F1 averaged over the ranks in targets or predictions.
    - `cs`: {k: share of |argmax - y| <= k} (cumulative score CS@k) for each k of `cs_ks`.
    - `mae_median`: MAE of `median_rank`, the smallest rank with cumulative probability >= 1/2.
    - `ece`: top-label expected calibration error, sum_b (n_b / N) |accuracy_b - confidence_b| over
      `num_bins` equal-width bins of the argmax confidence (see `calibration_bins`).
    - `nll`: mean -log p_y, p_y clipped below at 1e-12.
    - `rps`: ranked probability score, mean over images of sum_{k=0}^{K-1} (CDF_p(k) - 1[y <= k])^2,
      NOT divided by K - 1: it is in ranks, like an MAE (a one-hot prediction scores exactly |pred - y|).
    Argmax ties go to the smaller rank (numpy's argmax). `pred_rank` [N], when given, is the model's own rank
    read-out (NumCLIP's rounded regressor) and replaces p's argmax in balanced accuracy, macro-F1 and CS@k.
    """
    if num_ranks < 1:
        raise ValueError(f"num_ranks must be >= 1, got {num_ranks}")
    _check_bins(num_bins)
    ks = list(cs_ks)
    if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0 for k in ks):
        raise ValueError(f"cs_ks must be non-negative integers, got {ks!r}")
    p, y = as_probs_and_labels(probs, target, num_ranks)
    if y.size == 0:
        raise ValueError("no samples to evaluate")

    ranks = np.arange(num_ranks)
    arg = p.argmax(axis=1) if pred_rank is None else as_rank_labels("pred_rank", pred_rank, num_ranks)
    if arg.size != y.size:
        raise ValueError(f"lengths differ: target {y.size}, pred_rank {arg.size}")
    arg_err = np.abs(arg - y)
    expectation = p @ ranks.astype(np.float64)
    present = np.bincount(y, minlength=num_ranks)
    hits = np.bincount(y[arg == y], minlength=num_ranks)
    count, conf_sum, correct_sum = _top_label_bins(y, p, num_bins)
    cdf_gap = np.cumsum(p, axis=1) - (y[:, None] <= ranks[None, :])
    return {
        "n": int(y.size),
        "kendall_tau": _kendall_tau(y.astype(np.float64), expectation),
        "balanced_accuracy": float((hits[present > 0] / present[present > 0]).mean()),
        "macro_f1": _macro_f1(y, arg, num_ranks),
        "cs": {int(k): float((arg_err <= k).mean()) for k in ks},
        "mae_median": float(np.abs(median_rank(p) - y).mean()),
        "ece": float(np.abs(correct_sum - conf_sum).sum() / y.size),
        "nll": float(-np.log(np.clip(p[np.arange(y.size), y], NLL_FLOOR, None)).mean()),
        "rps": float((cdf_gap**2).sum(axis=1).mean()),
    }


def similarity_matrix(prototypes: torch.Tensor | np.ndarray) -> np.ndarray:
    """Cosine similarity [K, K] between prototype rows (float64; zero rows give zero similarity)."""
    if isinstance(prototypes, torch.Tensor):
        prototypes = prototypes.detach().to("cpu", torch.float64).numpy()
    t = np.asarray(prototypes, dtype=np.float64)
    if t.ndim != 2:
        raise ValueError(f"prototypes must be [K, D], got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("prototypes hold NaN or infinite values")
    t_hat = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    return t_hat @ t_hat.T


def prototype_ordinality(prototypes: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """OrdinalCLIP's ordinality of language prototypes: does similarity fall as ranks move apart?

    With S the cosine similarity of the rows, the pair (i, j) for 0 <= i <= j <= K-2 obeys ordinality
    when S[i, j] > S[i, j+1]: moving from rank j to j+1, away from rank i, lowers the similarity to i.
    Its span is j + 1 - i (1..K-1); there are K - span pairs of each span, K(K-1)/2 in all.
    Returns {"overall": obeying fraction of all pairs, "per_span": {span: obeying fraction}}.
    (The paper divides S by max(S) first; a positive rescale changes no comparison, so it is omitted.)
    """
    s = similarity_matrix(prototypes)
    k = s.shape[0]
    if k < 2:
        raise ValueError(f"ordinality needs at least 2 prototypes, got {k}")
    i, j = np.triu_indices(k - 1)  # all i <= j <= K-2
    obeys = s[i, j] > s[i, j + 1]
    span = j + 1 - i
    per_span = {int(d): float(obeys[span == d].mean()) for d in range(1, k)}
    return {"overall": float(obeys.mean()), "per_span": per_span}
