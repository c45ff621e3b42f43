"""dvc.yaml is the one stage list: `numclip run` and the Prefect flow pick up a new stage with no other edit."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import copy_pipeline

from flows.stages import pipeline_entries
from numclip.cli import main
from numclip.commands.run import pipeline, run_pipeline
from numclip.core.errors import NumclipError

EXTRA = """
  report:
    cmd: python -c "open('report.txt', 'w').write('after evaluate')"
    deps:
      - metrics/summary
    outs:
      - report.txt
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    copy_pipeline(tmp_path)
    with open(tmp_path / "dvc.yaml", "a", encoding="utf-8") as f:
        f.write(EXTRA)
    return tmp_path


def test_a_stage_added_to_dvc_yaml_is_run_by_numclip_run(project, monkeypatch):
    monkeypatch.chdir(project)
    calls: list[list[str]] = []
    run_pipeline(lambda argv: calls.append(argv) or 0, ["--params", "params.yaml"], log=lambda _: None)
    commands = [argv[0] for argv in calls]
    assert commands[0] == "ingest" and commands.index("evaluate") > commands.index("prototypes")
    assert ["train", "--method", "coop", "--resume", "auto", "--params", "params.yaml"] in calls
    assert (project / "report.txt").read_text() == "after evaluate"  # the new, non-numclip stage ran


def test_run_order_respects_the_dependencies(project):
    names = [s.name for s in pipeline(project)]
    assert names.index("report") > names.index("evaluate") > names.index("train@coop") > names.index("pretrain")
    assert names.index("counting@plain") > names.index("train_plain@plain-coop") > names.index("pretrain_plain@plain")


def test_a_stage_added_to_dvc_yaml_is_run_by_the_flow(project):
    stages = pipeline_entries(project)  # what the flow runs, a task each
    assert stages[0] == "ingest" and "report" in stages and stages.count("train@coop") == 1


def test_run_restricted_to_methods_skips_the_others(project, monkeypatch):
    monkeypatch.chdir(project)
    calls: list[list[str]] = []
    run_pipeline(lambda argv: calls.append(argv) or 0, [], ["coop"], log=lambda _: None)
    trained = [argv[2] for argv in calls if argv[0] == "train"]
    assert trained == ["coop", "coop"]  # the count-aware backbone and the plain twin
    assert ["evaluate", "--method", "coop"] in calls


def test_a_failing_stage_stops_the_run(project, monkeypatch):
    monkeypatch.chdir(project)
    calls: list[list[str]] = []
    with pytest.raises(NumclipError, match="stage pretrain failed"):
        run_pipeline(lambda argv: calls.append(argv) or (2 if argv[0] == "pretrain" else 0), [], log=lambda _: None)
    assert [argv[0] for argv in calls] == ["ingest", "pretrain"]


def test_run_outside_a_project_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "no dvc.yaml in" in err and "Traceback" not in err
