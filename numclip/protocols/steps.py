"""A protocol's steps, each self-contained so that any process that sees the protocol's folder can run
it: one fold step per fold (ingest, then pretrain unless a backbone file is given) and one run per
(fold, grid point, seed, method), each in a folder of its own.

A finished step leaves `done.json` in its folder with a fingerprint of what it depends on: its params
(output paths aside), its data, and the code that computes it. A step whose record holds the same
fingerprint is not run again, so a protocol that was interrupted resumes where it stopped, whether it
runs in one process (`numclip protocol`) or spread over workers (`python -m flows.sweep`).
The fold's fingerprint covers the manifest and the images' bytes, and a run's covers its fold's.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from numclip.config import Params, validate_params
from numclip.config.params_file import set_key
from numclip.config.paths import metrics_path, output_keys, rebased
from numclip.core.atomic import write_json
from numclip.core.digests import file_digest
from numclip.core.errors import NumclipError
from numclip.core.fingerprint import code_fingerprint

METRICS = ("mae_argmax", "mae_expectation", "accuracy")
# What each protocol level writes, placed under its own folder: the data and the backbone once per
# fold, the rest once per run (numclip.config.paths lists each stage's output keys).
FOLD_STAGES, BACKBONE_STAGES, RUN_STAGES = ("ingest",), ("pretrain",), ("prototypes", "train", "evaluate")
DONE = "done.json"  # a finished step's record, in its folder
SPEC = "protocol-spec.json"  # the params and the protocol, for steps run by other processes
FOLD_CODE = ("numclip.data.ingest", "numclip.stages.pretrain")
RUN_CODE = ("numclip.stages.train", "numclip.stages.evaluate")
Log = Callable[[str], None]


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


@dataclass(frozen=True)
class Run:
    """One training and evaluation: a method at a grid point and a seed, on a fold."""

    fold: Optional[int]
    point: tuple[tuple[str, Any], ...]  # the grid point's (key, value) pairs, in the grid's order
    seed: int
    method: str

    @property
    def point_and_seed(self) -> str:
        """'shots=4, seed=1'."""
        return point_text({**dict(self.point), "seed": self.seed})

    @property
    def label(self) -> str:
        """'fold0 coop shots=4, seed=1': how logs and the Prefect UI name the run."""
        return f"{fold_name(self.fold)} {self.method} {self.point_and_seed}"


def with_values(params: Params, values: dict[str, Any]) -> Params:
    """`params` with dotted keys set, validated like any params file (a bad value: a NumclipError naming it)."""
    raw = params.model_dump()
    for key, value in values.items():
        set_key(raw, key.split("."), value, key)
    return validate_params(raw, "the protocol's " + ", ".join(f"{k}={v!r}" for k, v in values.items()))


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def point_text(point: dict[str, Any]) -> str:
    """'shots=4, kind=few_shot': each grid key by its last part."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items())


def fold_name(fold: Optional[int]) -> str:
    return "all" if fold is None else f"fold{fold}"


def protocol_runs(protocol: Protocol) -> list[Run]:
    """Every run, in the order the results list them: fold, grid point, seed, method."""
    return [Run(fold, tuple(point.items()), seed, method) for fold in protocol.folds
            for point, seed in itertools.product(grid_points(protocol.grid), protocol.seeds)
            for method in protocol.methods]


def check_protocol(params: Params, protocol: Protocol) -> None:
    """Every method, grid key and value is valid: a mistake fails before any step runs."""
    for method in protocol.methods:
        params.method(method)
    for point in grid_points(protocol.grid):
        for method in protocol.methods:
            with_values(params, {**point, **protocol.method_params.get(method, {})})


# ----------------------------------------------------------------------------- folders and params
def fold_dir(protocol: Protocol, fold: Optional[int]) -> Path:
    return protocol.out_dir / fold_name(fold)


def run_dir(protocol: Protocol, run: Run) -> Path:
    """<fold>/<grid point,seed>/<method>: a folder of its own, so runs on different workers never share
    a file."""
    return fold_dir(protocol, run.fold) / run.point_and_seed.replace(", ", ",") / run.method


def fold_params(params: Params, protocol: Protocol, fold: Optional[int]) -> Params:
    """The fold's data and backbone under its folder (or the protocol's backbone file)."""
    folder = fold_dir(protocol, fold)
    out = rebased(with_values(params, {"data.fold": fold}), folder, FOLD_STAGES)
    if protocol.backbone is not None:
        return with_values(out, {"pretrain.output": protocol.backbone})
    return rebased(out, folder, BACKBONE_STAGES)


def run_params(params: Params, protocol: Protocol, run: Run) -> Params:
    values = {**dict(run.point), "train.seed": run.seed, **protocol.method_params.get(run.method, {})}
    return rebased(with_values(fold_params(params, protocol, run.fold), values),
                   run_dir(protocol, run), RUN_STAGES)


# ----------------------------------------------------------------------------- fingerprints and records
def _params_identity(params: Params) -> dict[str, Any]:
    """The params a step's result depends on: every value but where outputs are written."""
    raw = params.model_dump(mode="json")
    for key in output_keys():
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node.pop(last, None)
    return raw


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def data_digest(params: Params) -> str:
    """The fold's data: its manifest and every image it lists, by content."""
    from numclip.data import read_manifest

    manifest = read_manifest(params.data.manifest)
    h = hashlib.sha256(file_digest(params.data.manifest).encode())
    for row in manifest.rows:
        h.update(row.path.encode() + b"\0" + file_digest(manifest.abs_path(row)).encode())
    return h.hexdigest()


def fold_fingerprint(fold_p: Params, protocol: Protocol) -> str:
    """A fold's params (`fold_params`), its data (after ingest), the protocol's backbone file and the code."""
    backbone = file_digest(protocol.backbone) if protocol.backbone is not None else None
    return _digest(_params_identity(fold_p), data_digest(fold_p), backbone, code_fingerprint(*FOLD_CODE))


def run_fingerprint(run_p: Params, protocol: Protocol, run: Run) -> str:
    """The run's method and params (`run_params`), its fold's fingerprint (its data and backbone) and the
    code that trains."""
    fold_record = read_done(fold_dir(protocol, run.fold))
    if fold_record is None:
        raise NumclipError(f"{run.label}: fold {fold_name(run.fold)} is not prepared "
                           f"({fold_dir(protocol, run.fold) / DONE} not found); run its fold step first")
    return _digest(run.method, _params_identity(run_p), fold_record["fingerprint"], code_fingerprint(*RUN_CODE))


def read_done(folder: Path) -> Optional[dict[str, Any]]:
    """A step's record, or None if it has none (or an unreadable one: the step runs again)."""
    try:
        record = json.loads((folder / DONE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "fingerprint" in record else None


def finished(folder: Path, fingerprint: str) -> Optional[dict[str, Any]]:
    record = read_done(folder)
    return record if record is not None and record["fingerprint"] == fingerprint else None


def _where() -> dict[str, Any]:
    """Which host and devices ran a step (a worker is pinned to its GPUs by CUDA_VISIBLE_DEVICES)."""
    return {"host": os.uname().nodename, "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


# ----------------------------------------------------------------------------- the steps
def prepare_fold(params: Params, protocol: Protocol, fold: Optional[int], log: Log = print) -> dict[str, Any]:
    """Ingest the fold's data; pretrain its backbone unless one with the same fingerprint is there."""
    from numclip.data import ingest
    from numclip.stages.pretrain import pretrain

    p = fold_params(params, protocol, fold)
    folder = fold_dir(protocol, fold)
    log(ingest(p.data).summary())
    if protocol.backbone is not None and not Path(protocol.backbone).is_file():
        raise NumclipError(f"backbone file not found: {protocol.backbone}")
    fingerprint = fold_fingerprint(p, protocol)
    if (record := finished(folder, fingerprint)) is not None and Path(p.pretrain.output).is_file():
        log(f"{fold_name(fold)}: data, params and code unchanged; backbone {p.pretrain.output} kept")
        return record
    if protocol.backbone is None:
        pretrain(p, log=log)
    record = {"fingerprint": fingerprint, "fold": fold, "backbone": p.pretrain.output, **_where()}
    write_json(folder / DONE, record)
    return record


def run_step(params: Params, protocol: Protocol, run: Run, log: Log = print) -> dict[str, Any]:
    """Train and evaluate one run (its fold prepared), or return its record if it already finished."""
    from numclip.stages.evaluate import evaluate
    from numclip.stages.train import train

    folder = run_dir(protocol, run)
    p = run_params(params, protocol, run)
    fingerprint = run_fingerprint(p, protocol, run)
    if (record := finished(folder, fingerprint)) is not None:
        log(f"{run.label}: finished before with the same params, data and code; not run again")
        return record
    train(p, run.method, log=log)
    result = evaluate(p, run.method, log=log)
    record = {"fingerprint": fingerprint, "fold": run.fold, "seed": run.seed, "method": run.method,
              "point": dict(run.point), "metrics": {m: result["test"].get(m) for m in METRICS},
              "record": str(metrics_path(p, run.method)), **_where()}
    write_json(folder / DONE, record)
    return record


# ----------------------------------------------------------------------------- for other processes
def save_spec(params: Params, protocol: Protocol) -> Path:
    """Write what the steps need into the protocol's folder, which every worker must see."""
    path = protocol.out_dir / SPEC
    write_json(path, {"params": params.model_dump(mode="json"),
                      "protocol": {**asdict(protocol), "out_dir": str(protocol.out_dir)}})
    return path


def load_spec(path: str | Path) -> tuple[Params, Protocol]:
    path = Path(path)
    if not path.is_file():
        raise NumclipError(f"{path} not found: every worker must see the protocol's folder (a shared "
                           "file system, mounted at the same path)")
    spec = json.loads(path.read_text(encoding="utf-8"))
    raw = spec["protocol"]
    return Params.model_validate(spec["params"]), Protocol(**{**raw, "out_dir": Path(raw["out_dir"])})
