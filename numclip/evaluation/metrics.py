"""Evaluation metrics (docs/methods.md, Metrics): numpy in, plain JSON-serialisable Python out.

Undefined values are reported as None, never NaN, so metrics files stay valid JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _as_int_labels(name: str, values: Any, num_ranks: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size and not np.all(np.equal(np.mod(array, 1), 0)):
        raise ValueError(f"{name} must hold integer rank indices")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= num_ranks):
        raise ValueError(f"{name} must lie in [0, {num_ranks - 1}], got [{array.min()}, {array.max()}]")
    return array


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    # Undefined for fewer than two samples or a constant side; checked up front to avoid scipy warnings.
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
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
    y = _as_int_labels("target", target, num_ranks)
    arg = _as_int_labels("pred_argmax", pred_argmax, num_ranks)
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
