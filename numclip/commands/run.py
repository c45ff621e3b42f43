"""`numclip run`: every stage of dvc.yaml in dependency order, without DVC's cache.

dvc.yaml is the one list of stages: DVC itself expands its foreach/matrix groups and orders them,
so a stage added there is run here (and by the Prefect flow) with no other edit.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from numclip.core.errors import NumclipError

WARM_FLAG = "--warm"  # numclip.warm's flag: a stage run in this process needs no warm server


@dataclass(frozen=True)
class PipelineStage:
    name: str  # DVC's address: train@coop
    cmd: str


def pipeline(project: str | Path = ".") -> list[PipelineStage]:
    """The stages of `project`'s dvc.yaml, each after the stages it depends on, otherwise in file order."""
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    project = Path(project)
    if not (project / "dvc.yaml").is_file():
        raise NumclipError(f"no dvc.yaml in {project.resolve()}: run inside a numclip project")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    try:
        with Repo(str(project), uninitialized=True) as repo:
            stages = [s for s in repo.index.stages if getattr(s, "cmd", None)]
            graph = repo.index.graph  # edges run from a stage to the stages it depends on
            position = {s: i for i, s in enumerate(stages)}
            order = nx.lexicographical_topological_sort(graph.reverse(), key=lambda s: position.get(s, -1))
            return [PipelineStage(s.name, s.cmd) for s in order if s in position]
    except DvcException as e:
        raise NumclipError(f"{project / 'dvc.yaml'}: {e}") from None


def _restricted(argv: list[str], methods: list[str] | None) -> list[str] | None:
    """The stage's numclip arguments for a run limited to `methods` (None: skip the stage)."""
    if methods is None:
        return argv
    if "--method" in argv:
        return argv if argv[argv.index("--method") + 1] in methods else None
    if argv[:1] == ["evaluate"]:
        return [*argv, *(a for m in methods for a in ("--method", m))]
    return argv


def run_pipeline(run_numclip: Callable[[list[str]], int], common: list[str], methods: list[str] | None = None,
                 log: Callable[[str], None] = print) -> None:
    """Run every stage of ./dvc.yaml: a `numclip ...` command in this process through `run_numclip`
    (given the run's --params and --set as `common`), any other in a shell. NumclipError on a failure."""
    for stage in pipeline():
        argv = shlex.split(stage.cmd)
        if argv[:1] != ["numclip"]:
            log(f"== {stage.name}: {stage.cmd}")
            if subprocess.run(stage.cmd, shell=True).returncode != 0:
                raise NumclipError(f"stage {stage.name} failed: {stage.cmd}")
            continue
        args = argv[2:] if argv[1:2] == [WARM_FLAG] else argv[1:]  # this process is warm already
        args = _restricted(args, methods)
        if args is None:
            continue
        log(f"== {stage.name}: numclip {shlex.join(args)}")
        if run_numclip([*args, *common]) != 0:
            raise NumclipError(f"stage {stage.name} failed (see above)")
