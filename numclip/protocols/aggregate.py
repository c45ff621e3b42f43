"""Folds × seeds: mean ± sample std per method and metric, a Markdown table, and the CSVs behind it.

A run is {"fold": f | None, "seed": s, "method": m, "metrics": {name: float}}. A metric missing from
(or None in) some runs of a method is averaged over the runs that have it, so its n can be
smaller than the method's run count; the table then shows that n beside the value. std is the
sample standard deviation (ddof=1), 0.0 for a single run.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from numclip.core.atomic import write_csv, write_text
from numclip.core.errors import NumclipError

MISSING = "–"


def _check_run(i: int, run: Any) -> None:
    if not isinstance(run, dict) or "method" not in run or not isinstance(run.get("metrics"), dict):
        raise NumclipError(f"run {i}: need a dict with 'method' and a 'metrics' dict, got {run!r}")


def _summary(values: list[float]) -> dict[str, float | int]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def aggregate(runs: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """{method: {"n": runs, "metrics": {name: {"mean", "std", "n"}}}}, in first-seen order."""
    grouped: dict[str, dict[str, Any]] = {}
    for i, run in enumerate(runs):
        _check_run(i, run)
        g = grouped.setdefault(run["method"], {"n": 0, "values": {}})
        g["n"] += 1
        for name, value in run["metrics"].items():
            if value is not None:
                g["values"].setdefault(name, []).append(float(value))
    return {method: {"n": g["n"], "metrics": {name: _summary(v) for name, v in g["values"].items()}}
            for method, g in grouped.items()}


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.3f}"


def _cell(entry: dict[str, Any], metric: str) -> str:
    m = entry["metrics"].get(metric)
    if m is None:
        return MISSING
    text = f"{_fmt(m['mean'])} ± {_fmt(m['std'])}"
    return text if m["n"] == entry["n"] else f"{text} (n={m['n']})"


def results_markdown(agg: dict[str, dict[str, Any]], metrics: Sequence[str],
                     published: dict[str, dict[str, float]] | None = None) -> str:
    """`| method | n | <metric> (mean ± std) | … |`, plus a `<metric> (published)` column after each
    metric when `published` ({method: {metric: value}}) is given, so runs read against the paper."""
    header = ["method", "n"]
    for metric in metrics:
        header.append(f"{metric} (mean ± std)")
        if published is not None:
            header.append(f"{metric} (published)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, entry in agg.items():
        cells = [method, str(entry["n"])]
        for metric in metrics:
            cells.append(_cell(entry, metric))
            if published is not None:
                value = published.get(method, {}).get(metric)
                cells.append(MISSING if value is None else f"{value:g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _metric_names(runs: Sequence[dict]) -> list[str]:
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run["metrics"]))
    return list(names)


def write_results(runs: Sequence[dict], agg: dict[str, dict[str, Any]], out_dir: str | Path,
                  metrics: Sequence[str],
                  published: dict[str, dict[str, float]] | None = None) -> dict[str, Path]:
    """runs.csv (every run, every metric: the per-run values are kept), results.csv (method,
    metric, n, mean, std for every aggregated metric) and results.md (the `metrics` columns), each
    written atomically so a killed run leaves no half table."""
    out_dir = Path(out_dir)
    for i, run in enumerate(runs):
        _check_run(i, run)
    names = _metric_names(runs)
    run_rows = [[_blank(run.get("fold")), _blank(run.get("seed")), run["method"]]
                + [_blank(run["metrics"].get(n)) for n in names] for run in runs]
    result_rows = [[method, name, m["n"], m["mean"], m["std"]]
                   for method, entry in agg.items() for name, m in entry["metrics"].items()]
    paths = {"runs": out_dir / "runs.csv", "results": out_dir / "results.csv",
             "markdown": out_dir / "results.md"}
    write_csv(paths["runs"], ["fold", "seed", "method", *names], run_rows)
    write_csv(paths["results"], ["method", "metric", "n", "mean", "std"], result_rows)
    write_text(paths["markdown"], results_markdown(agg, metrics, published))
    return paths


def _blank(value: Any) -> Any:
    """None as an empty CSV cell, not the string 'None'."""
    return "" if value is None else value
