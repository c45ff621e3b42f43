"""Every output path is defined once (its params field): dvc.yaml, the plain twin and protocol runs
all derive theirs from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from dvc.repo import Repo

from numclip.config import load_params
from numclip.config.paths import get_key as _get
from numclip.config.paths import output_keys, output_paths, plain_twin, rebased
from numclip.protocols.steps import FOLD_STAGES, RUN_STAGES

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dvc_outs() -> dict[str, list[str]]:
    """Each dvc.yaml stage's outs (plots included), as DVC interpolates them from params.yaml."""
    with Repo(str(REPO), uninitialized=True) as repo:
        return {s.name: [o.def_path for o in s.outs] for s in repo.index.stages}


def _inside(path: str, folders: list[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


def test_every_dvc_out_is_a_params_output_path(dvc_outs):
    paths = output_paths(load_params(REPO / "params.yaml"))
    for stage, outs in dvc_outs.items():
        stray = [o for o in outs if not _inside(o, paths)]
        assert not stray, f"dvc.yaml stage {stage} writes {stray}, which no params output field names"


def test_the_plain_twin_paths_are_the_ones_dvc_yaml_gives_its_stages(dvc_outs):
    twin = plain_twin(load_params(REPO / "params.yaml"))
    assert dvc_outs["pretrain_plain@plain"] == [twin.pretrain.output, twin.pretrain.metrics]
    t = twin.train
    assert dvc_outs["train_plain@plain-coop"] == [f"{t.models_dir}/coop.safetensors", f"{t.runs_dir}/coop",
                                                  f"{t.metrics_dir}/coop.json", f"{t.plots_dir}/coop.csv"]
    assert twin.pretrain.counting.weight == 0 and twin.comparison.backbones == []


def test_the_twin_shares_data_and_prototypes_and_moves_the_rest():
    params = load_params(None)
    twin = plain_twin(params)
    root = params.plain_backbone.root
    for key in output_keys():
        section, *rest = key.split(".")
        ours = _get(params, key)
        theirs = _get(twin, key)
        if section in ("pretrain", "train"):
            assert theirs == f"{root}/{ours}", key
        else:
            assert theirs == ours, key


def test_a_protocol_run_moves_every_output_of_its_stages(tmp_path):
    """evaluate.summary_dir was once missing from the protocol's hand-written list."""
    params = load_params(None)
    run = rebased(params, tmp_path / "run", RUN_STAGES)
    moved = output_keys(RUN_STAGES)
    assert "evaluate.summary_dir" in moved and "train.checkpoints_dir" in moved
    for key in moved:
        assert Path(_get(run, key)).is_relative_to(tmp_path / "run"), key
    fold = rebased(params, tmp_path / "fold0", FOLD_STAGES)
    assert fold.data.manifest == str(tmp_path / "fold0" / "data" / "manifest.parquet")
    assert fold.train.models_dir == params.train.models_dir
