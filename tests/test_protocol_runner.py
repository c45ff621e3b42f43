"""`numclip protocol` end to end on tiny data: folds × seeds × a grid × methods, each run in its own
folder, aggregated; recipes; data.fold; the few-shot subset recorded with each run; test-set
selection only on request; `numclip import` through the CLI."""

import csv
import json

import pytest
import yaml
from PIL import Image

from numclip.cli import main
from numclip.config import load_params
from numclip.core.errors import NumclipError
from numclip.data import read_manifest
from numclip.data.manifest import Candidate
from numclip.data.splits import select_fold
from numclip.protocols.recipes import load_recipe

TINY = ["data.num_ranks=4", "data.synthetic.num_images=120", "data.synthetic.image_size=32",
        "pretrain.epochs=1", "pretrain.batch_size=16", "train.epochs=1", "train.batch_size=16",
        "evaluate.batch_size=64", "data.incoming=none", "task.concepts.edges=[0, 1, 2]",
        "task.concepts.names=[a single, a couple of, a few]"]


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def few_shot_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    argv = ["protocol", "--name", "fs", "--out", str(root / "fs"), "--method", "zeroshot", "--method", "coop",
            "--vary", "train.subset.shots=1,4", "--seeds", "0,1", "--plot", "train.subset.shots",
            *_sets(TINY + ["train.subset.kind=few_shot"])]
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.chdir(root)
    try:
        assert main(argv) == 0
    finally:
        monkeypatch.undo()
    return root / "fs"


def test_protocol_writes_every_run_and_the_aggregate(few_shot_run):
    runs = _csv(few_shot_run / "runs.csv")
    assert len(runs) == 2 * 2 * 2  # shots x seeds x methods
    assert {r["method"] for r in runs} == {"zeroshot (shots=1)", "coop (shots=1)", "zeroshot (shots=4)",
                                           "coop (shots=4)"}
    results = _csv(few_shot_run / "results.csv")
    coop4 = [r for r in results if r["method"] == "coop (shots=4)" and r["metric"] == "mae_argmax"][0]
    values = [float(r["mae_argmax"]) for r in runs if r["method"] == "coop (shots=4)"]
    assert float(coop4["mean"]) == pytest.approx(sum(values) / 2) and coop4["n"] == "2"
    assert "| coop (shots=4) | 2 |" in (few_shot_run / "results.md").read_text()
    assert (few_shot_run / "shots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_run_records_its_training_subset(few_shot_run):
    run_dir = few_shot_run / "all" / "shots=1,seed=1" / "coop"  # <fold>/<point,seed>/<method>
    record = json.loads((run_dir / "metrics" / "train" / "coop.json").read_text())
    assert record["train_subset"]["kind"] == "few_shot" and record["train_subset"]["params"]["shots"] == 1
    assert record["train_rows"] == 4, "one training image per label, 4 labels"
    manifest = read_manifest(few_shot_run / "all" / "data" / "manifest.parquet")
    assert len(manifest.split("train")) > 4, "the subset is drawn at training time; the data is whole"
    protocol = json.loads((few_shot_run / "protocol.json").read_text())
    assert protocol["grid"] == {"train.subset.shots": [1, 4]} and len(protocol["runs"]) == 8


def test_a_rerun_skips_what_finished_and_redoes_what_did_not(few_shot_run, capsys):
    """Every step left done.json with its fingerprint: running the protocol again trains nothing, except
    a run whose record is gone; the tables come out the same."""
    runs_before = (few_shot_run / "runs.csv").read_text()
    (few_shot_run / "all" / "shots=4,seed=0" / "coop" / "done.json").unlink()
    backbone = few_shot_run / "all" / "models" / "backbone.safetensors"
    backbone_mtime = backbone.stat().st_mtime_ns
    argv = ["protocol", "--name", "fs", "--out", str(few_shot_run), "--method", "zeroshot", "--method", "coop",
            "--vary", "train.subset.shots=1,4", "--seeds", "0,1", *_sets(TINY + ["train.subset.kind=few_shot"])]
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("not run again") == 7 and "backbone" in out and "kept" in out
    assert "all coop shots=4, seed=0: finished before" not in out
    assert backbone.stat().st_mtime_ns == backbone_mtime, "the fold's backbone was not pretrained again"
    assert (few_shot_run / "runs.csv").read_text() == runs_before


def _candidates(spec):
    return [Candidate(path=p, label=0, split=s, fold=f) for p, s, f in spec]


def test_select_fold_as_test_set_or_the_folds_own_splits():
    official = _candidates([("a", None, 0), ("b", None, 1), ("c", None, "2"), ("d", None, 1)])
    chosen = {c.path: c.split for c in select_fold(official, 1)}
    assert chosen == {"a": "train", "b": "test", "c": "train", "d": "test"}
    per_fold = _candidates([("a", "train", 0), ("a", "test", 1), ("b", "test", 0), ("b", "train", 1)])
    assert [(c.path, c.split) for c in select_fold(per_fold, 1)] == [("a", "test"), ("b", "train")]
    with pytest.raises(NumclipError, match="no row has fold 7"):
        select_fold(official, 7)
    with pytest.raises(NumclipError, match="some rows of the fold have a split"):
        select_fold(_candidates([("a", "train", 0), ("b", None, 0)]), 0)


def test_test_set_selection_only_on_request():
    with pytest.raises(NumclipError, match="allow_test_selection"):
        load_params(None, ["train.select_split=test"])
    allowed = load_params(None, ["train.select_split=test", "train.allow_test_selection=true"])
    assert allowed.train.select_split == "test"


def _hci_tree(root, per_decade=6):
    for d, decade in enumerate(["1930s", "1940s", "1950s", "1960s", "1970s"]):
        for i in range(per_decade):
            (root / decade).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (40 * d, 10 * i, 90)).save(root / decade / f"{i}.jpg")


def test_recipe_runs_one_fold_of_an_imported_dataset(tmp_path, monkeypatch, capsys):
    """numclip import hci -> a recipe with folds -> numclip protocol on fold 0 only."""
    _hci_tree(tmp_path / "hci")
    monkeypatch.chdir(tmp_path)
    assert main(["import", "hci", str(tmp_path / "hci"), "--out", "imports/hci.csv"]) == 0
    printed = capsys.readouterr().out
    assert "--set data.path=imports/hci.csv" in printed and "--set data.num_ranks=5" in printed
    recipe = yaml.safe_load((REPO_RECIPES / "hci.yaml").read_text())
    recipe["params"].update({"data.path": "imports/hci.csv", "data.images_root": str(tmp_path / "hci"),
                             "model.arch": "numclip-tiny", "model.pretrained": None, "train.epochs": 1})
    (tmp_path / "hci.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["protocol", "--recipe", "hci.yaml", "--folds", "0", "--method", "zeroshot",
                 "--method", "coop", *_sets(["pretrain.epochs=1", "pretrain.batch_size=8", "train.batch_size=8",
                                            "data.incoming=none", "data.synthetic.image_size=32"])]) == 0
    results = _csv(tmp_path / "protocols" / "hci" / "runs.csv")
    assert [(r["fold"], r["method"]) for r in results] == [("0", "zeroshot"), ("0", "coop")]
    markdown = (tmp_path / "protocols" / "hci" / "results.md").read_text()
    assert "| coop | 1 |" in markdown and "| 0.76 |" in markdown, "coop's published MAE beside ours"
    manifest = read_manifest(tmp_path / "protocols" / "hci" / "fold0" / "data" / "manifest.parquet")
    assert manifest.counts() == {"train": 20, "val": 5, "test": 5}, "fold 0's own 4/1/1 per decade"


def test_recipe_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndataset: y\nparams: {}\nmethods: {coop: {params: {model.arch: RN50}}}\n")
    with pytest.raises(NumclipError, match="methods.coop.params.model.arch"):
        load_recipe(bad)
    (tmp_path / "short.yaml").write_text("name: x\n")
    with pytest.raises(NumclipError, match="missing key"):
        load_recipe(tmp_path / "short.yaml")


def test_every_shipped_recipe_loads_and_validates():
    for path in sorted(REPO_RECIPES.glob("*.yaml")):
        recipe = load_recipe(path)
        params = load_params(None, [f"{k}={json.dumps(v)}" for k, v in recipe.params.items()])
        for method, overrides in recipe.method_params().items():
            params.method(method)
            load_params(None, [f"{k}={json.dumps(v)}" for k, v in {**recipe.params, **overrides}.items()])
        assert recipe.published(), path


REPO_RECIPES = __import__("pathlib").Path(__file__).resolve().parents[1] / "recipes"


def test_a_bad_grid_value_is_one_line_naming_the_key(tmp_path, capsys):
    assert main(["protocol", "--out", str(tmp_path / "p"), "--method", "coop", "--vary", "train.epochs=1,x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("numclip protocol: error: invalid params in the protocol's train.epochs='x'")
    assert len(err.splitlines()) == 1 and not (tmp_path / "p").exists()
