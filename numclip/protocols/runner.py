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

import yaml

from numclip.config import Params
from numclip.config.params_file import set_key
from numclip.config.paths import rebased
from numclip.core.atomic import write_json
from numclip.core.errors import NumclipError
from numclip.protocols.aggregate import aggregate, write_results

METRICS = ("mae_argmax", "mae_expectation", "accuracy")
# What each protocol level writes, placed under its own folder: the data and the backbone once per
# fold, the rest once per run (numclip.config.paths lists each stage's output keys).
FOLD_STAGES, BACKBONE_STAGES, RUN_STAGES = ("ingest",), ("pretrain",), ("prototypes", "train", "evaluate")


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
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> train./methods. keys


def with_values(params: Params, values: dict[str, Any]) -> Params:
    """`params` with dotted keys set (validated like any params file)."""
    raw = params.model_dump()
    for key, value in values.items():
        set_key(raw, key.split("."), value, key)
    return Params.model_validate(raw)


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def point_text(point: dict[str, Any]) -> str:
    """'shots=4, kind=few_shot': each grid key by its last part."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items())


def point_name(point: dict[str, Any], seed: int) -> str:
    """A run's folder name: the grid point and the seed."""
    return point_text({**point, "seed": seed}).replace(", ", ",")


def run_protocol(params: Params, protocol: Protocol, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every (fold, grid point, seed, method); write runs.csv, results.csv and results.md."""
    from numclip.config.paths import metrics_path
    from numclip.data import ingest
    from numclip.stages.evaluate import evaluate
    from numclip.stages.pretrain import pretrain
    from numclip.stages.train import train

    for method in protocol.methods:
        params.method(method)
    points = grid_points(protocol.grid)
    for point in points:  # a bad key or value fails before any run
        for method in protocol.methods:
            with_values(params, {**point, **protocol.method_params.get(method, {})})
    runs: list[dict[str, Any]] = []
    for fold in protocol.folds:
        fold_dir = protocol.out_dir / ("all" if fold is None else f"fold{fold}")
        fold_params = rebased(with_values(params, {"data.fold": fold}), fold_dir, FOLD_STAGES)
        log(ingest(fold_params.data).summary())
        if protocol.backbone is not None:
            if not Path(protocol.backbone).is_file():
                raise NumclipError(f"backbone file not found: {protocol.backbone}")
            fold_params = with_values(fold_params, {"pretrain.output": protocol.backbone})
        else:
            fold_params = rebased(fold_params, fold_dir, BACKBONE_STAGES)
            pretrain(fold_params, log=log)
        for point, seed in itertools.product(points, protocol.seeds):
            run_dir = fold_dir / point_name(point, seed)
            run_params = rebased(with_values(fold_params, {**point, "train.seed": seed}), run_dir, RUN_STAGES)
            for method in protocol.methods:
                method_params = with_values(run_params, protocol.method_params.get(method, {}))
                train(method_params, method, log=log)
                result = evaluate(method_params, method, log=log)
                runs.append({"fold": fold, "seed": seed, "method": method, "point": point,
                             "metrics": {m: result["test"].get(m) for m in METRICS},
                             "record": str(metrics_path(method_params, method))})
    return _write(protocol, runs, log)


def run_label(run: dict[str, Any]) -> str:
    """The row a run is aggregated into: the method, and the grid point when there is one."""
    if not run["point"]:
        return run["method"]
    return f"{run['method']} ({point_text(run['point'])})"


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


def _int_list(text: Optional[str], what: str) -> Optional[list[Optional[int]]]:
    if text is None:
        return None
    if text.strip().lower() in ("none", "null", ""):
        return [None]
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise NumclipError(f"--{what} takes comma-separated integers, e.g. 0,1,2; got '{text}'") from None


def _grid(axes: list[str]) -> dict[str, list[Any]]:
    grid = {}
    for axis in axes:
        key, sep, values = axis.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise NumclipError(f"--vary '{axis}' must look like section.key=v1,v2,...")
        grid[key.strip()] = [yaml.safe_load(v) for v in values.split(",")]
    return grid


def protocol_from_args(args: Any) -> tuple[Params, Protocol]:
    """`numclip protocol`'s options (and its recipe) -> validated params and the protocol to run."""
    from numclip.config import load_params
    from numclip.protocols.recipes import load_recipe

    recipe = load_recipe(args.recipe) if args.recipe else None
    preset = [f"{k}={json.dumps(v)}" for k, v in (recipe.params if recipe else {}).items()]
    if args.faithful_test_selection:
        preset += ["train.select_split=test", "train.allow_test_selection=true"]
    params = load_params(args.params, preset + list(args.overrides))
    name = args.name or (recipe.name if recipe else "protocol")
    methods = args.method or (list(recipe.methods) if recipe else list(params.methods))
    protocol = Protocol(
        name=name, methods=methods, out_dir=Path(args.out or Path("protocols") / name),
        folds=_int_list(args.folds, "folds") or (recipe.folds if recipe else [None]),
        seeds=_int_list(args.seeds, "seeds") or (recipe.seeds if recipe else [0]),
        grid=_grid(args.vary), backbone=args.backbone,
        published=recipe.published() if recipe else {},
        method_params=recipe.method_params() if recipe else {})
    if args.plot and args.plot not in protocol.grid:
        raise NumclipError(f"--plot {args.plot}: not one of the --vary keys ({', '.join(protocol.grid) or 'none'})")
    return params, protocol


def save_protocol_curve(runs: list[dict[str, Any]], key: str, protocol: Protocol) -> Path:
    from numclip.protocols.curves import save_curve
    return save_curve(runs, key, "mae_argmax", protocol.out_dir / f"{key.rsplit('.', 1)[-1]}.png",
                      f"{protocol.name}: test MAE vs {key}")
