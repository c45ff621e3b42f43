"""One command for a whole protocol: folds × seeds × a grid of params × methods, each run in its own
folder, then mean ± std per method and grid point with every run's values kept.

Per fold the data is ingested once (`data.fold` picks the fold) and the backbone pretrained once,
unless an existing backbone file is given: the embedded mini-protocols reuse the pipeline's backbone,
the stand-in for a pretrained CLIP, as the papers' few-shot runs reuse CLIP. Every output path of the
params is moved under the protocol's folder, so a protocol never touches the pipeline's own files.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from numclip.atomic import write_json
from numclip.config import Params, apply_overrides
from numclip.errors import NumclipError
from numclip.protocols.aggregate import aggregate, write_results

METRICS = ("mae_argmax", "mae_expectation", "accuracy")
OUTPUT_PATHS = (  # every params key a stage writes to: redirected into the run's folder
    "data.manifest", "data.rejects", "data.synthetic.output_dir", "pretrain.output", "pretrain.metrics",
    "prototypes.output", "prototypes.metrics", "train.models_dir", "train.runs_dir", "train.metrics_dir",
    "train.plots_dir", "evaluate.metrics_dir", "evaluate.comparison", "evaluate.plots_dir",
    "evaluate.figures_dir", "evaluate.heads_dir")
DATA_PATHS = OUTPUT_PATHS[:3]
BACKBONE_PATHS = OUTPUT_PATHS[3:5]


@dataclass
class Protocol:
    """What to run: methods, folds (None: the data's own split), seeds, and a grid of params values."""

    name: str
    methods: list[str]
    out_dir: Path
    folds: list[Optional[int]] = field(default_factory=lambda: [None])
    seeds: list[int] = field(default_factory=lambda: [0])
    grid: dict[str, list[Any]] = field(default_factory=dict)
    backbone: Optional[str] = None  # a pretrained backbone file to reuse instead of pretraining
    published: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> metric -> value


def with_values(params: Params, values: dict[str, Any]) -> Params:
    """`params` with dotted keys set (validated like any params file)."""
    raw = apply_overrides(params.model_dump(), [f"{k}={json.dumps(v)}" for k, v in values.items()])
    return Params.model_validate(raw)


def _get(params: Params, dotted: str) -> Any:
    node: Any = params
    for key in dotted.split("."):
        node = getattr(node, key)
    return node


def moved(params: Params, keys: tuple[str, ...], folder: Path) -> Params:
    """`params` with the output paths `keys` placed under `folder` (their relative layout kept)."""
    return with_values(params, {k: str(folder / _get(params, k)) for k in keys})


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def point_name(point: dict[str, Any], seed: int) -> str:
    parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items()] + [f"seed={seed}"]
    return ",".join(parts)


def run_protocol(params: Params, protocol: Protocol, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every (fold, grid point, seed, method); write runs.csv, results.csv and results.md."""
    from numclip.data import ingest
    from numclip.evaluate import evaluate, metrics_path
    from numclip.pretrain import pretrain
    from numclip.train import train

    for method in protocol.methods:
        params.method(method)
    points = grid_points(protocol.grid)
    for point in points:  # a bad key or value fails before any run
        with_values(params, point)
    runs: list[dict[str, Any]] = []
    for fold in protocol.folds:
        fold_dir = protocol.out_dir / ("all" if fold is None else f"fold{fold}")
        fold_params = moved(with_values(params, {"data.fold": fold}), DATA_PATHS, fold_dir)
        log(ingest(fold_params.data).summary())
        if protocol.backbone is not None:
            if not Path(protocol.backbone).is_file():
                raise NumclipError(f"backbone file not found: {protocol.backbone}")
            fold_params = with_values(fold_params, {"pretrain.output": protocol.backbone})
        else:
            fold_params = moved(fold_params, BACKBONE_PATHS, fold_dir)
            pretrain(fold_params, log=log)
        for point, seed in itertools.product(points, protocol.seeds):
            run_dir = fold_dir / point_name(point, seed)
            run_params = moved(with_values(fold_params, {**point, "train.seed": seed}), OUTPUT_PATHS[5:], run_dir)
            for method in protocol.methods:
                train(run_params, method, log=log)
                result = evaluate(run_params, method, log=log)
                runs.append({"fold": fold, "seed": seed, "method": method, "point": point,
                             "metrics": {m: result["test"].get(m) for m in METRICS},
                             "record": str(metrics_path(run_params, method))})
    return _write(protocol, runs, log)


def run_label(run: dict[str, Any]) -> str:
    """The row a run is aggregated into: the method, and the grid point when there is one."""
    if not run["point"]:
        return run["method"]
    return f"{run['method']} ({', '.join(f'{k.rsplit('.', 1)[-1]}={v}' for k, v in run['point'].items())})"


def _write(protocol: Protocol, runs: list[dict[str, Any]], log: Callable[[str], None]) -> dict[str, Any]:
    labelled = [{**r, "method": run_label(r)} for r in runs]
    agg = aggregate(labelled)
    published = {run_label(r): protocol.published[r["method"]] for r in runs if r["method"] in protocol.published}
    paths = write_results(labelled, agg, protocol.out_dir, list(METRICS), published or None)
    write_json(protocol.out_dir / "protocol.json", {
        "name": protocol.name, "methods": protocol.methods, "folds": protocol.folds, "seeds": protocol.seeds,
        "grid": protocol.grid, "backbone": protocol.backbone, "runs": runs})
    log(paths["markdown"].read_text(encoding="utf-8").rstrip("\n"))
    log(f"protocol {protocol.name}: {len(runs)} runs -> {protocol.out_dir}")
    return {"runs": runs, "aggregate": agg, "paths": paths}
