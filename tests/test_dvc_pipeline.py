"""The real `dvc repro` on tiny params in a temporary copy of the repository: every stage runs, the
outputs and the lock are right, and a second `dvc repro` does nothing."""

import json
import shutil
import subprocess

import pytest
import yaml
from tiny_repo import METHODS, STAGES, dvc, dvc_env, make_tiny_repo


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    return make_tiny_repo(tmp_path_factory.mktemp("repo"))


def test_dvc_repro_end_to_end(repo_copy):
    out = dvc(repo_copy, "repro")
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out, stage
    assert "| ordinalclip |" in out, "the run ends with the comparison table"

    comparison = json.loads((repo_copy / "metrics" / "comparison.json").read_text())
    assert set(comparison) == set(METHODS)
    for path in ("data/manifest.parquet", "models/backbone.safetensors", "models/coop.safetensors",
                 "artifacts/prototypes.safetensors", "artifacts/heads/ordinalclip.safetensors",
                 "figures/coop/confusion.png", "plots/confusion/coop.csv", "plots/training/coop.csv",
                 "metrics/pretrain.json"):
        assert (repo_copy / path).is_file(), path
    assert any((repo_copy / "runs" / "coop").iterdir()), "TensorBoard logs"

    lock = yaml.safe_load((repo_copy / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    assert lock["stages"]["train@coop"]["params"]["params.yaml"]["train"]["epochs"] == 2
    assert lock["stages"]["ingest"]["params"]["params.yaml"]["data"]["num_ranks"] == 4

    again = dvc(repo_copy, "repro")
    assert "Running stage" not in again, again
    status = dvc(repo_copy, "status")
    assert "up to date" in status, status


def test_bad_param_stops_the_first_stage_naming_the_key(repo_copy, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(repo_copy, bad, ignore=shutil.ignore_patterns("data", "models", "runs", ".dvc"))
    shutil.copytree(repo_copy / ".dvc", bad / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    params = yaml.safe_load((bad / "params.yaml").read_text())
    params["train"]["epochs"] = "two"
    (bad / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dvc_env(bad)
    proc = subprocess.run(["dvc", "repro", "--force"], cwd=bad, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    assert "train.epochs" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (bad / "data" / "manifest.parquet").exists(), "the first stage stops; nothing after it runs"


@pytest.mark.parametrize("path, stage", [
    ("numclip/models/readouts.py", "evaluate"),          # a read-out
    ("numclip/models/prompts.py", "prototypes"),         # how prompts are initialised
    ("numclip/losses/ranking.py", "train@ordinalclip"),  # a loss
])
def test_a_code_change_makes_dvc_status_report_the_stage(repo_copy, path, stage):
    """After the repro above everything is up to date; editing a file the stage imports makes DVC
    report the stage (the copy's sources are what dvc.yaml's deps hash)."""
    assert json.loads(dvc(repo_copy, "status", "--json")) == {}, "run after test_dvc_repro_end_to_end"
    source = repo_copy / path
    original = source.read_text()
    source.write_text(original + "\n# a change\n")
    try:
        assert stage in json.loads(dvc(repo_copy, "status", "--json"))
    finally:
        source.write_text(original)
    assert json.loads(dvc(repo_copy, "status", "--json")) == {}
