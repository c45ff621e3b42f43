"""The readable record of a retraining run: the methods' metrics as a table, and a markdown report of
which stages ran, the comparison, and what changed since the previous run and since the last commit.

Everything here is plain data and text; the flow publishes it as Prefect artifacts.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from flows.stages import StageResult

Metrics = dict[tuple[str, str], float]  # (metrics file, dotted key) -> value


def _numeric_leaves(node: object, prefix: str = "") -> dict[str, float]:
    if isinstance(node, dict):
        out: dict[str, float] = {}
        for key, value in node.items():
            out.update(_numeric_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return {prefix: float(node)}
    return {}


DVC_QUERY_TIMEOUT_S = 600  # `dvc metrics show/diff` read files only: minutes mean something is stuck


def _dvc(project: Path, *args: str) -> str:
    try:
        proc = subprocess.run(["dvc", *args], cwd=project, capture_output=True, text=True,
                              env=dict(os.environ, DVC_NO_ANALYTICS="1"), timeout=DVC_QUERY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"dvc {' '.join(args)} did not finish in {DVC_QUERY_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def metrics_snapshot(project: Path) -> Metrics:
    """Every numeric metric DVC knows of in the workspace (`dvc metrics show --json`)."""
    shown = json.loads(_dvc(project, "metrics", "show", "--json") or "{}")
    files = next(iter(shown.values()), {}).get("data", {}) if shown else {}
    return {(path, key): value for path, entry in files.items()
            for key, value in _numeric_leaves(entry.get("data", {})).items()}


def metrics_changes(before: Metrics, after: Metrics) -> list[tuple[str, str, float | None, float | None]]:
    """(file, metric, before, after) for every metric added, removed or changed, sorted."""
    keys = sorted(set(before) | set(after))
    return [(path, key, before.get((path, key)), after.get((path, key))) for path, key in keys
            if before.get((path, key)) != after.get((path, key))]


def dvc_metrics_diff(project: Path, target: str) -> str:
    """`dvc metrics diff --md --targets <target>`: the workspace against the last commit (HEAD).

    Best effort: without a git history there is nothing to compare with, and the report says why."""
    try:
        return _dvc(project, "metrics", "diff", "--md", "--targets", target).strip()
    except RuntimeError as e:
        return f"Not available: {e}"


def metrics_table(comparison_json: Path) -> list[dict[str, object]]:
    """One row per method from the evaluate stage's comparison, values rounded for reading."""
    comparison = json.loads(comparison_json.read_text(encoding="utf-8"))
    return [{"method": method, **{k: _cell(v) for k, v in row.items()}} for method, row in comparison.items()]


def _cell(value: object) -> object:
    if isinstance(value, float):
        return round(value, 4)
    return "; ".join(value) if isinstance(value, list) else value


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def report_markdown(stages: list[StageResult], overrides: list[str], changed: list[str],
                    comparison_md: str, changes: list[tuple[str, str, float | None, float | None]],
                    head_diff: str) -> str:
    lines = ["# numclip retraining run", ""]
    if overrides:
        lines.append("Params overrides: " + ", ".join(f"`{o}`" for o in overrides)
                     + (f" (changed params.yaml: {', '.join(f'`{c}`' for c in changed)})" if changed
                        else " (params.yaml already had these values)"))
    else:
        lines.append("Params overrides: none.")
    ran = [e for s in stages for e in s.ran]
    lines += ["", "## Stages", "",
              f"{len(ran)} stage(s) ran: {', '.join(ran)}." if ran else
              "Nothing was stale: no stage ran, nothing was retrained.", "",
              "| stage | ran | up to date |", "|---|---|---|"]
    lines += [f"| {s.stage} | {', '.join(s.ran) or '—'} | {', '.join(s.up_to_date) or '—'} |" for s in stages]
    lines += ["", "## Comparison", "", comparison_md.strip(), "", "## Changed since the previous run", ""]
    if changes:
        lines += ["| file | metric | before | after | change |", "|---|---|---|---|---|"]
        for path, key, old, new in changes:
            delta = _number(new - old) if old is not None and new is not None else "—"
            lines.append(f"| {path} | {key} | {_number(old)} | {_number(new)} | {delta} |")
    else:
        lines.append("No metric changed.")
    lines += ["", "## The comparison against the last commit (`dvc metrics diff`)", "",
              head_diff or "No metric differs from HEAD.", ""]
    return "\n".join(lines)
