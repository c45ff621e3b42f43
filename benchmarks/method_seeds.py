"""Mean ± std over training seeds of the comparison table, from DVC experiments.

Run the seeds first (each is a full `dvc repro` with another `train.seed`, in a temporary workspace):
    for s in 1 2; do dvc exp run --temp -n seed$s --set-param train.seed=$s; done
then: python benchmarks/method_seeds.py   (the workspace's own results count as seed 0)
"""

from __future__ import annotations

import json
import subprocess
from statistics import mean, stdev

COLUMNS = ["test MAE (argmax)", "test MAE (expectation)", "test accuracy", "prototype ordinality"]


def experiments() -> dict[int, dict]:
    """train.seed -> comparison table, for the workspace and the experiments named seed<N>."""
    raw = json.loads(subprocess.run(["dvc", "exp", "show", "--json", "-A", "--no-pager"], capture_output=True,
                                    text=True, check=True).stdout)
    found: dict[int, dict] = {}

    def walk(node) -> None:
        if isinstance(node, dict):
            data = node.get("data")
            name = (node.get("name") or (data or {}).get("rev") or "") if isinstance(data, dict) else ""
            if name == "workspace" or name.startswith("seed"):
                seed = data["params"]["params.yaml"]["data"]["train"]["seed"]
                table = data["metrics"].get("metrics/comparison.json", {}).get("data")
                if table:
                    found.setdefault(seed, table)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(raw)
    return found


def main() -> None:
    runs = experiments()
    seeds = sorted(runs)
    methods = list(runs[seeds[0]])
    print(f"train.seed in {seeds} (mean ± std over {len(seeds)} runs)\n")
    print("| method | " + " | ".join(COLUMNS) + " |\n|" + "---|" * (len(COLUMNS) + 1))
    for method in methods:
        cells = []
        for column in COLUMNS:
            values = [runs[s][method][column] for s in seeds if method in runs[s]]
            spread = stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{mean(values):.3f} ± {spread:.3f}")
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
