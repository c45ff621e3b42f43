"""Time the default `dvc repro` from a clean clone, stage by stage, and check that a second run is a no-op.

Usage: python benchmarks/pipeline_time.py [REPO] [--keep DIR]   (default: this repository; commit first)
Writes benchmarks/results/pipeline_time.csv and prints a markdown table for the README. `--keep DIR`
clones into DIR and leaves it there (its outputs and dvc.lock are a complete `dvc repro`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=dict(os.environ, DVC_NO_ANALYTICS="1"))
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", nargs="?", default=str(HERE.parent))
    parser.add_argument("--keep", help="clone into this (new) folder and keep it")
    args = parser.parse_args()
    repo = Path(args.repo).resolve()
    with (contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory()) as tmp:
        clone = Path(tmp) / "clone"
        clone.parent.mkdir(parents=True, exist_ok=True)
        run(["git", "clone", "-q", str(repo), str(clone)], Path(tmp))
        stages = run(["dvc", "stage", "list", "--name-only"], clone).split()
        rows = []
        for stage in stages:
            start = time.perf_counter()
            run(["dvc", "repro", "--single-item", stage], clone)
            rows.append((stage, time.perf_counter() - start))
        total = sum(s for _, s in rows)
        start = time.perf_counter()
        second = run(["dvc", "repro"], clone)
        rows.append(("second dvc repro (no-op)", time.perf_counter() - start))
        status = run(["dvc", "status"], clone).strip()
        comparison = (clone / "metrics" / "comparison.md").read_text()
    noop = "Running stage" not in second
    meta = {"date": datetime.date.today().isoformat(), "cpu": cpu_name(), "cores": os.cpu_count(),
            "python": platform.python_version()}
    out = HERE / "results" / "pipeline_time.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["stage", "seconds", *meta])
        for stage, seconds in rows + [("total (all stages)", total)]:
            writer.writerow([stage, f"{seconds:.1f}", *meta.values()])
    print(f"{meta['cpu']}, {meta['cores']} cores, {meta['date']}\n")
    print("| stage | seconds |\n|---|---|")
    for stage, seconds in rows:
        print(f"| {stage} | {seconds:.0f} |")
    print(f"| **total** | **{total:.0f}** ({total / 60:.1f} min) |\n")
    print(f"second `dvc repro` reran nothing: {noop}; `dvc status`: {status}\n")
    print(comparison)


if __name__ == "__main__":
    main()
