"""A temporary copy of the repository with tiny params, for tests that run the real `dvc repro`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from numclip.config.schema import COMPARED_METHODS

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
METHODS = ["zeroshot", "coop", "ordinalclip", "ordinalclip_l2r", "numclip_faithful", "numclip_fixed", "linear_probe"]
STAGES = ["ingest", "pretrain", "pretrain_plain@plain", "prototypes", *[f"train@{m}" for m in METHODS],
          *[f"train_plain@plain-{m}" for m in COMPARED_METHODS], "evaluate", "counting@plain"]


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


def dvc_env(cwd: Path) -> dict[str, str]:
    """Hermetic: analytics off and DVC's site cache inside the temporary copy."""
    return dict(os.environ, DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(Path(cwd) / ".dvc" / "tmp" / "site"))


def dvc(cwd: Path, *args: str, timeout: int = 600) -> str:
    proc = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=dvc_env(cwd))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def make_tiny_repo(dst: Path, methods: list[str] | None = None) -> Path:
    """Copy the tracked files (not the committed metrics and plots) to `dst`, shrink the params (and
    keep only `methods`, when given), and commit the copy to a fresh git repository."""
    if shutil.which("dvc") is None or shutil.which("numclip") is None:
        pytest.fail("dvc and numclip must be installed (pip install -e .)")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for rel in tracked.splitlines():
        if (REPO / rel).is_file() and not rel.startswith(("metrics/", "plots/", "comparison/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    for keys, value in TINY.items():
        node = params
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    if methods is not None:
        params["methods"] = {name: params["methods"][name] for name in methods}
        params["comparison"]["methods"] = [m for m in params["comparison"]["methods"] if m in methods]
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(dst, "init", "-q")
    git(dst, "add", "-A")
    git(dst, "commit", "-qm", "copy")
    return dst
