"""A protocol's metric against the one grid key it varies (MAE vs shots), one line per method, with the
spread over seeds and folds as error bars."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Optional

from matplotlib.figure import Figure

from numclip.evaluation.plots import save_figure


def curve_points(runs: list[dict[str, Any]], key: str, metric: str) -> dict[str, list[tuple[Any, float, float]]]:
    """method -> [(grid value, mean, std)] in the grid's order, over the runs at that value."""
    values: dict[str, dict[Any, list[float]]] = defaultdict(dict)
    for run in runs:
        value = run["metrics"].get(metric)
        if value is not None:
            values[run["method"]].setdefault(run["point"][key], []).append(value)
    return {method: [(x, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
                     for x, v in by_x.items()] for method, by_x in values.items()}


def curve_figure(points: dict[str, list[tuple[Any, float, float]]], key: str, metric: str,
                 title: str, label: Callable[[Any], str] = str, log_x: bool = False) -> Figure:
    fig = Figure(figsize=(6, 4), dpi=110)
    ax = fig.add_subplot()
    for method, line in points.items():
        positions = [x for x, _, _ in line] if log_x else list(range(len(line)))
        ax.errorbar(positions, [m for _, m, _ in line], yerr=[s for _, _, s in line], marker="o",
                    capsize=3, label=method)
        ax.set_xticks(positions, [label(x) for x, _, _ in line])
    if log_x:
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def save_curve(runs: list[dict[str, Any]], key: str, metric: str, path: str | Path, title: str,
               label: Callable[[Any], str] = str, log_x: Optional[bool] = None) -> Path:
    points = curve_points(runs, key, metric)
    numeric = all(isinstance(x, (int, float)) for line in points.values() for x, _, _ in line)
    save_figure(curve_figure(points, key, metric, title, label, numeric if log_x is None else log_x), path)
    return Path(path)
