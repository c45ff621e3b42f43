"""Figures for people: confusion matrix, per-rank error, prototype similarity.

Builders return a Figure (TensorBoard's `add_figure` renders it; `save_figure` writes a PNG atomically).
Figures are built without pyplot, so no GUI backend is needed or switched and none stays registered.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not by every stage that imports this
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

from numclip.core.atomic import atomic_path

_ANNOTATE_MAX_K = 15  # beyond this, per-cell numbers are unreadable
_MAX_TICKS = 21


def _square(matrix: Any, name: str) -> np.ndarray:
    array = np.asarray(matrix, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty K x K matrix, got shape {array.shape}")
    return array


def _tick_positions(k: int) -> np.ndarray:
    # Every rank when few; otherwise an evenly spaced subset that always includes the first and last.
    if k <= _MAX_TICKS:
        return np.arange(k)
    return np.unique(np.linspace(0, k - 1, _MAX_TICKS).round().astype(int))


def _tick_names(k: int, labels: Sequence[str] | None) -> list[str]:
    names = [str(i) for i in range(k)] if labels is None else [str(s) for s in labels]
    if len(names) != k:
        raise ValueError(f"expected {k} labels, got {len(names)}")
    return names


def _rank_ticks(ax: Axes, names: list[str], y: bool = True) -> None:
    k = len(names)
    pos = _tick_positions(k)
    ax.set_xticks(pos, [names[p] for p in pos], rotation=90 if k > _ANNOTATE_MAX_K else 0)
    if y:
        ax.set_yticks(pos, [names[p] for p in pos])


def _heatmap(matrix: np.ndarray, labels: Sequence[str] | None, cbar_label: str, fmt: str, **imshow: Any) -> Figure:
    k = matrix.shape[0]
    names = _tick_names(k, labels)  # validate before a figure exists, so errors leak none
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 6) if k <= _ANNOTATE_MAX_K else (9, 8), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, interpolation="nearest", **imshow)
    fig.colorbar(image, ax=ax, label=cbar_label)
    _rank_ticks(ax, names)
    if k <= _ANNOTATE_MAX_K:
        threshold = (np.nanmin(matrix) + np.nanmax(matrix)) / 2
        for (r, c), value in np.ndenumerate(matrix):
            ax.text(c, r, format(value, fmt), ha="center", va="center", fontsize=8,
                    color="white" if value < threshold else "black")
    return fig


def confusion_figure(confusion: Any, labels: Sequence[str] | None = None) -> Figure:
    """Counts of (true rank, argmax prediction); a good model shows a bright diagonal band."""
    matrix = _square(confusion, "confusion")
    fig = _heatmap(matrix, labels, "images", "g", cmap="viridis")
    ax = fig.axes[0]
    ax.set_xlabel("predicted rank (argmax)")
    ax.set_ylabel("true rank")
    ax.set_title(f"Confusion matrix (n = {int(matrix.sum())})")
    return fig


def per_rank_error_figure(
    per_rank_mae: Sequence[float | None], per_rank_count: Sequence[int] | None = None
) -> Figure:
    """MAE of the argmax read-out per true rank; ranks without samples are shaded, counts drawn if given."""
    mae = np.array([np.nan if v is None else v for v in per_rank_mae], dtype=np.float64)
    k = mae.size
    if k == 0:
        raise ValueError("per_rank_mae is empty")
    counts = None if per_rank_count is None else np.asarray(per_rank_count, dtype=np.float64)
    if counts is not None and counts.shape != (k,):
        raise ValueError(f"per_rank_count must have {k} entries, got shape {counts.shape}")
    ranks = np.arange(k)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5) if k <= _ANNOTATE_MAX_K else (11, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.bar(ranks, np.nan_to_num(mae), color="tab:blue", label="MAE (argmax)")
    for i, rank in enumerate(ranks[np.isnan(mae)]):
        ax.axvspan(rank - 0.5, rank + 0.5, color="0.85", zorder=0, label="no samples" if i == 0 else None)
    ax.set_xlabel("true rank")
    ax.set_ylabel("mean absolute error (ranks)")
    ax.set_title("Per-rank error", pad=24)
    ax.set_xlim(-0.6, k - 0.4)
    _rank_ticks(ax, _tick_names(k, None), y=False)
    handles = ax.get_legend_handles_labels()[0]
    if counts is not None:
        twin = ax.twinx()
        twin.plot(ranks, counts, ".-", color="tab:orange", alpha=0.8, label="samples")
        twin.set_ylabel("samples per rank")
        twin.set_ylim(bottom=0)
        handles += twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=len(handles), frameon=False)
    return fig


def interval_figure(curve: dict[str, Sequence[Any]], per_rank_width: Sequence[float | None],
                    per_rank_coverage: Sequence[float | None], alpha: float) -> Figure:
    """Conformal intervals: test coverage against the nominal 1 - alpha (left; on the diagonal or above
    is what calibration promises), and mean width and coverage per true rank at the configured alpha."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.6])
    nominal = np.asarray(curve["nominal"], dtype=np.float64)
    left.plot([0, 1], [0, 1], ":", color="0.5", label="nominal")
    left.plot(nominal, np.asarray(curve["coverage"], dtype=np.float64), "o-", color="tab:blue", label="test")
    left.set_xlim(min(nominal.min(), 0.5) - 0.05, 1.0)
    left.set_ylim(min(nominal.min(), 0.5) - 0.05, 1.02)
    left.set_xlabel("nominal coverage 1 - alpha (calibrated on val)")
    left.set_ylabel("test coverage")
    left.set_title("Coverage")
    left.legend(loc="lower right", frameon=False)
    width = np.array([np.nan if v is None else v for v in per_rank_width], dtype=np.float64)
    ranks = np.arange(width.size)
    right.bar(ranks, np.nan_to_num(width), color="tab:blue", label="mean width (ranks)")
    right.set_xlabel("true rank")
    right.set_ylabel("mean interval width (ranks)")
    right.set_title(f"Intervals at alpha = {alpha:g}", pad=24)
    right.set_xlim(-0.6, width.size - 0.4)
    _rank_ticks(right, _tick_names(width.size, None), y=False)
    twin = right.twinx()
    coverage = np.array([np.nan if v is None else v for v in per_rank_coverage], dtype=np.float64)
    twin.plot(ranks, coverage, ".-", color="tab:orange", label="coverage")
    twin.axhline(1 - alpha, ls=":", color="tab:orange", alpha=0.6)
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("coverage per rank")
    handles = right.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    right.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, frameon=False)
    return fig


def similarity_figure(similarity: Any, title: str = "Cosine similarity of rank prototypes",
                      labels: Sequence[str] | None = None, axis: str = "rank") -> Figure:
    """Prototype similarity heatmap; ordinal prototypes fade smoothly away from the diagonal.

    The colour scale spans the off-diagonal values and the cells carry as many decimals as tell
    them apart, so prototypes that are all 0.997-1.000 similar still show their structure. `axis`
    names what the prototypes are ("rank", or "concept" for NumCLIP's bins), `labels` their words."""
    matrix = _square(similarity, "similarity")
    off = matrix[~np.eye(len(matrix), dtype=bool)] if len(matrix) > 1 else matrix.ravel()
    low, high = float(np.nanmin(off)), float(np.nanmax(off))
    spread = high - low
    decimals = 2 if spread >= 0.1 else min(4, 1 + int(np.ceil(-np.log10(max(spread, 1e-4)))))
    fig = _heatmap(matrix, labels, "cosine similarity (scale: off-diagonal range)", f".{decimals}f",
                   cmap="magma", vmin=low, vmax=high if spread > 0 else low + 1e-6)
    ax = fig.axes[0]
    ax.set_xlabel(axis)
    ax.set_ylabel(axis)
    ax.set_title(title)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike) -> None:
    """Write `fig` as PNG to `path` atomically (a pyplot-free Figure is freed with its last reference)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
