"""The real `dvc repro` on tiny params in a temporary copy of the repository: every stage runs, the
outputs and the lock are right, and a second `dvc repro` does nothing."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = {
    ("data", "num_ranks"): 4,
    ("data", "synthetic", "num_images"): 240,
    ("data", "synthetic", "image_size"): 32,
    ("pretrain", "epochs"): 2,
    ("train", "epochs"): 2,
    ("train", "batch_size"): 32,
    ("task", "concepts", "edges"): [0, 1, 2],  # 4 ranks: {1} {2} {3, 4}
    ("task", "concepts", "names"): ["a single", "a couple of", "a few"],
}
METHODS = ["zeroshot", "coop", "ordinalclip", "ordinalclip_l2r", "numclip_faithful", "numclip_fixed"]
STAGES = ["ingest", "pretrain", "prototypes", *[f"train@{m}" for m in METHODS], "evaluate"]


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


def _env(cwd):
    """Hermetic: analytics off and DVC's site cache inside the temporary copy."""
    return dict(os.environ, DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(Path(cwd) / ".dvc" / "tmp" / "site"))


def _dvc(cwd, *args, timeout=600):
    env = _env(cwd)
    proc = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    if shutil.which("dvc") is None or shutil.which("numclip") is None:
        pytest.fail("dvc and numclip must be installed (pip install -e .)")
    dst = tmp_path_factory.mktemp("repo")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for rel in tracked.splitlines():
        if (REPO / rel).is_file() and not rel.startswith(("metrics/", "plots/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    for keys, value in TINY.items():
        node = params
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(dst, "init", "-q")
    _git(dst, "add", "-A")
    _git(dst, "commit", "-qm", "copy")
    return dst


def test_dvc_repro_end_to_end(repo_copy):
    out = _dvc(repo_copy, "repro")
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

    again = _dvc(repo_copy, "repro")
    assert "Running stage" not in again, again
    status = _dvc(repo_copy, "status")
    assert "up to date" in status, status


def test_bad_param_stops_the_first_stage_naming_the_key(repo_copy, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(repo_copy, bad, ignore=shutil.ignore_patterns("data", "models", "runs", ".dvc"))
    shutil.copytree(repo_copy / ".dvc", bad / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    params = yaml.safe_load((bad / "params.yaml").read_text())
    params["train"]["epochs"] = "two"
    (bad / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = _env(bad)
    proc = subprocess.run(["dvc", "repro", "--force"], cwd=bad, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    assert "train.epochs" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (bad / "data" / "manifest.parquet").exists(), "the first stage stops; nothing after it runs"
