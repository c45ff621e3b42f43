"""One command for a whole protocol: folds × seeds × a grid of params × methods, each run in its own
folder, then mean ± std per method and grid point with every run's values kept.

Per fold the data is ingested once (`data.fold` picks the fold) and the backbone pretrained once,
unless an existing backbone file is given: the embedded mini-protocols reuse the pipeline's backbone,
the stand-in for a pretrained CLIP, as the papers' few-shot runs reuse CLIP. Every output path of the
params is moved under the protocol's folder, so a protocol never touches the pipeline's own files.
`run_protocol` runs the steps (numclip.protocols.steps) one after another in this process;
`python -m flows.sweep` spreads the same steps over Prefect workers and ends with the same `finish`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from numclip.config import Params
from numclip.core.atomic import write_json
from numclip.core.errors import NumclipError
from numclip.protocols.aggregate import aggregate, write_results
from numclip.protocols.steps import METRICS, Protocol, check_protocol, point_text, prepare_fold, protocol_runs, run_step


def run_protocol(params: Params, protocol: Protocol, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every step in this process, one after another (a step that already finished is skipped);
    write runs.csv, results.csv and results.md."""
    check_protocol(params, protocol)
    records = []
    for fold in protocol.folds:
        prepare_fold(params, protocol, fold, log)
        records += [run_step(params, protocol, run, log) for run in protocol_runs(protocol) if run.fold == fold]
    return finish(protocol, records, log)


def run_label(run: dict[str, Any]) -> str:
    """The row a run is aggregated into: the method, and the grid point when there is one."""
    if not run["point"]:
        return run["method"]
    return f"{run['method']} ({point_text(run['point'])})"


def finish(protocol: Protocol, runs: list[dict[str, Any]], log: Callable[[str], None]) -> dict[str, Any]:
    """Aggregate the runs' records (in protocol_runs' order) into the protocol's tables."""
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
