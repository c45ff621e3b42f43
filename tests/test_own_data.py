"""Your own images, the way a new user runs them: a folder (or a table) -> `numclip init` -> `dvc repro`
-> a second `dvc repro` that does nothing -> `numclip predict`, in a temporary copy of the repository,
on tiny data. Also: what init writes, the task presets, and the learned-nothing warnings."""

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from tiny_repo import REPO, dvc, dvc_env, make_tiny_repo

from numclip.commands.init import epochs_for, init_project, survey
from numclip.config import load_params
from numclip.core.errors import NumclipError
from numclip.evaluation.diagnosis import learning_warnings

K = 4
TINY = ["pretrain.epochs=0", "train.epochs=1", "train.batch_size=16", "evaluate.batch_size=64",
        "data.verify_images=false"]


def make_images(root: Path, per_rank: int = 10, split_layout: bool = False) -> list[tuple[str, int]]:
    """PNG images whose brightness grows with the rank, in <root>/<label>/; returns (path, label)."""
    rng = np.random.default_rng(0)
    rows = []
    for label in range(K):
        for i in range(per_rank):
            split = ("train", "train", "val", "test")[i % 4] if split_layout else None
            folder = root / (split or "") / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(rng.normal(60 * label + 20, 10, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
            rows.append(((folder / f"{i}.png").relative_to(root).as_posix(), label))
    return rows


def numclip_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["numclip", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=dvc_env(cwd))


@pytest.fixture(scope="module")
def folder_repo(tmp_path_factory):
    """A repository copy whose params.yaml `numclip init` wrote for an image folder, after `dvc repro`."""
    repo = make_tiny_repo(tmp_path_factory.mktemp("own"))
    make_images(repo / "digits")
    (repo / "digits" / "3" / "notes.txt").write_text("not an image")
    init = numclip_cli(repo, "init", "digits", "--template", "a photo of the digit {}.",
                       *[a for o in TINY for a in ("--set", o)])
    assert init.returncode == 0, init.stdout + init.stderr
    out = dvc(repo, "repro")
    return repo, init.stdout, out


def test_init_then_dvc_repro_on_a_folder(folder_repo):
    repo, init_out, out = folder_repo
    assert f"K = {K}" in init_out and "next: dvc repro" in init_out
    params = load_params(repo / "params.yaml")
    assert (params.data.source, params.data.path, params.data.root) == ("folder", "digits", "digits")
    assert params.task.preset == "generic" and params.count_loss_weight == 0
    assert params.comparison.backbones == []
    for stage in ("ingest", "pretrain", "prototypes", "train@coop", "evaluate"):
        assert f"Running stage '{stage}'" in out, stage
    for absent in ("pretrain_plain", "train_plain", "counting"):  # a generic task: no counting comparison
        assert f"Running stage '{absent}" not in out, absent
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert not any(s.startswith(("pretrain_plain", "train_plain", "counting")) for s in lock["stages"])
    assert not (repo / "metrics" / "counting.json").exists(), "no stale demo result"
    comparison = json.loads((repo / "metrics" / "comparison.json").read_text())
    assert set(comparison) == set(params.methods)

    again = dvc(repo, "repro")
    assert "Running stage" not in again, again
    assert "up to date" in dvc(repo, "status")


def test_metrics_show_is_one_row_per_method(folder_repo):
    repo, _, _ = folder_repo
    shown = dvc(repo, "metrics", "show")
    rows = [line for line in shown.splitlines() if line.startswith("metrics/")]
    assert sorted(rows) == sorted(line for line in rows if line.startswith("metrics/summary/"))
    assert len(rows) == len(load_params(repo / "params.yaml").methods)
    assert max(len(line) for line in shown.splitlines()) <= 120, shown


def test_a_model_that_learned_nothing_is_flagged(folder_repo):
    """pretrain.epochs=0: the backbone has taken zero steps, so its zero-shot prior is at chance."""
    repo, _, out = folder_repo
    pretrain = json.loads((repo / "metrics" / "pretrain.json").read_text())
    assert pretrain["warnings"], pretrain["zero_shot_val"]
    assert "WARNING:" in out and "learned nothing" in out
    zeroshot = json.loads((repo / "metrics" / "eval" / "zeroshot.json").read_text())
    assert zeroshot["warnings"]
    table = (repo / "metrics" / "comparison.md").read_text()
    assert any(line.startswith("| zeroshot |") and "⚠" in line for line in table.splitlines())
    assert "learned nothing" in table


def test_predict_on_the_folder_lists_what_it_skipped(folder_repo):
    repo, _, _ = folder_repo
    proc = numclip_cli(repo, "predict", "digits", "--model", "models/coop.safetensors", "--head",
                       "artifacts/heads/coop.safetensors", "--out", "predictions.csv", "--groups-out", "groups.csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((repo / "predictions.csv").open()))
    assert len(rows) == 10 * K and all(0 <= int(r["rank"]) < K for r in rows)
    assert all(0 <= int(r["lo"]) <= int(r["hi"]) < K for r in rows), "the head is calibrated: every row an interval"
    groups = list(csv.DictReader((repo / "groups.csv").open()))
    assert [g["group"] for g in groups] == [f"digits/{label}" for label in range(K)]  # a folder each
    assert all(int(g["images"]) == 10 for g in groups)
    for g in groups:  # the mean of its images' expectations, rounded
        mean = np.mean([float(r["expectation"]) for r in rows if r["path"].startswith(g["group"] + "/")])
        assert float(g["value"]) == pytest.approx(mean, abs=1e-3) and int(g["rank"]) == int(np.floor(mean + 0.5))
    assert "skipped 1 file that is not an image" in proc.stderr and "notes.txt" in proc.stderr


def test_a_changed_image_reruns_the_pipeline(folder_repo, tmp_path):
    """data.root is a dependency: replacing one image makes ingest and what follows stale."""
    repo, _, _ = folder_repo
    image = repo / "digits" / "0" / "0.png"
    original = image.read_bytes()
    try:
        Image.new("RGB", (24, 24), (250, 0, 0)).save(image)
        status = dvc(repo, "status")
        assert "ingest" in status and "digits" in status, status
    finally:
        image.write_bytes(original)
    assert "up to date" in dvc(repo, "status")


def test_init_then_dvc_repro_on_a_table(tmp_path):
    repo = make_tiny_repo(tmp_path / "repo")
    images = repo / "mine" / "images"
    rows = make_images(images, per_rank=8)
    table = repo / "mine" / "labels.csv"
    with table.open("w", newline="") as f:  # two images per person
        csv.writer(f).writerows([("path", "label", "group"),
                                 *[(f"images/{p}", label, f"person{i // 2}") for i, (p, label) in enumerate(rows)]])
    methods = "methods={zeroshot: {learner: fixed}, coop: {learner: plain}}"
    init = numclip_cli(repo, "init", "mine/labels.csv", "--task", "grades", "--set", methods,
                       *[a for o in TINY for a in ("--set", o)])
    assert init.returncode == 0, init.stdout + init.stderr
    params = load_params(repo / "params.yaml")
    assert (params.data.source, params.data.root) == ("table", "mine")
    assert params.rank_words() == ["1", "2", "3", "4"] and params.task.template == "a photo of grade {}."
    out = dvc(repo, "repro")
    assert "Running stage 'train@coop'" in out and "counting" not in out
    assert set(json.loads((repo / "metrics" / "comparison.json").read_text())) == {"zeroshot", "coop"}
    result = json.loads((repo / "metrics" / "eval" / "coop.json").read_text())
    for split in ("val", "test"):
        groups = result[f"{split}_groups"]
        assert groups["aggregate"] == "mean" and groups["ungrouped_images"] == 0
        assert groups["n"] == groups["groups"] and result[split]["n"] / 2 <= groups["groups"] <= result[split]["n"]
    assert "Running stage" not in dvc(repo, "repro")


def test_the_counting_task_keeps_its_comparison_and_others_have_none(tmp_path):
    """The stage list follows comparison.backbones, which the task decides (init writes it)."""
    repo = make_tiny_repo(tmp_path / "repo")

    def stages() -> list[str]:
        return dvc(repo, "stage", "list", "--name-only").split()

    assert {"pretrain_plain@plain", "train_plain@plain-coop", "counting@plain"} <= set(stages())
    make_images(repo / "ages")
    assert numclip_cli(repo, "init", "ages", "--task", "age").returncode == 0
    assert not [s for s in stages() if s.startswith(("pretrain_plain", "train_plain", "counting"))]
    params = load_params(repo / "params.yaml")
    assert params.task.concept_preset == "age" or params.task.concepts.preset == "levels"
    assert numclip_cli(repo, "init", "ages", "--task", "counting").returncode == 0
    assert "counting@plain" in stages()
    assert load_params(repo / "params.yaml").count_loss_weight == 1.0


def test_survey_reports_labels_sizes_and_unreadable_files(tmp_path):
    make_images(tmp_path / "data", split_layout=True)
    (tmp_path / "data" / "train" / "2" / "broken.png").write_bytes(b"\x89PNG not an image")
    found = survey(tmp_path / "data")
    assert found.source == "folder" and found.num_ranks == K
    assert found.n_rows == 41 and found.label_counts == {0: 10, 1: 10, 2: 10, 3: 10}, "valid rows"
    assert found.split_counts == {"train": 24, "val": 8, "test": 8}
    assert found.sizes and all(s == (24, 24) for s in found.sizes)
    assert [reason for _, reason in found.rejects] == ["unreadable image (not a format PIL can identify)"]
    text = found.summary()
    assert "K = 4" in text and "broken.png" in text and "width 24..24" in text


def test_init_errors_and_budget(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "words").mkdir()
    (tmp_path / "words" / "child").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "words" / "child" / "a.png")
    with pytest.raises(NumclipError, match="no row with an integer label"):
        init_project("words")
    with pytest.raises(NumclipError, match="unknown task"):
        init_project("words", task="weather")
    with pytest.raises(NumclipError, match="does not exist"):
        init_project("nowhere")
    (tmp_path / "params.yaml").write_text("data:\n  num_ranks: 4\n  num_ranks: 5\n")
    with pytest.raises(NumclipError, match=r"duplicate key 'num_ranks' \(line 3\)"):
        load_params("params.yaml")
    (tmp_path / "0").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "0" / "a.png")
    with pytest.raises(NumclipError, match="holds this project"):
        init_project(".")
    (tmp_path / "own").mkdir()
    (tmp_path / "0").rename(tmp_path / "own" / "0")
    with pytest.raises(NumclipError, match="duplicate key"):  # init does not overwrite what it cannot read
        init_project("own")
    assert epochs_for(330, 2100, 64) == 10, "the embedded demo's own budget"
    assert epochs_for(330, 100, 64) == 165 and epochs_for(330, 10, 64) == 200  # capped


def test_init_clears_the_previous_results_and_keeps_comments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    for name in ("metrics/counting.json", "plots/training/coop.csv", "dvc.lock", "models/x.safetensors"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("old")
    make_images(tmp_path / "data" / "mine")  # under data/, beside the manifest: must survive
    report = init_project("data/mine")
    assert not (tmp_path / "metrics" / "counting.json").exists() and not (tmp_path / "plots").exists()
    assert not (tmp_path / "dvc.lock").exists()
    assert not (tmp_path / "models").exists() and (tmp_path / "data" / "mine" / "0" / "0.png").is_file()
    assert "dvc.lock" in report.removed
    text = (tmp_path / "params.yaml").read_text()
    assert "# numclip params: one section per stage" in text, "comments are kept"
    assert load_params("params.yaml").data.num_ranks == K


def test_learning_warnings_on_constructed_metrics():
    collapsed = {"n": 40, "accuracy": 0.25, "confusion": [[0, 10, 0, 0]] * 4}
    warnings = learning_warnings(collapsed, 4, "m")
    assert any("one class" in w for w in warnings) and any("chance" in w for w in warnings)
    good = {"n": 40, "accuracy": 0.9, "confusion": [[9 if i == j else (1 if j == (i + 1) % 4 else 0)
                                                     for j in range(4)] for i in range(4)]}
    assert learning_warnings(good, 4, "m") == []
    majority = {"n": 40, "accuracy": 0.95, "confusion": [[38, 0], [0, 2]]}  # the data itself is one class
    assert learning_warnings(majority, 2, "m") == []


def test_no_warning_on_the_embedded_demo():
    """The committed results of the default `dvc repro` raise none."""
    params = load_params(REPO / "params.yaml")
    for method in params.methods:
        result = json.loads((REPO / params.evaluate.metrics_dir / f"{method}.json").read_text())
        assert learning_warnings(result["test"], params.data.num_ranks, method) == [], method
    pretrain = json.loads((REPO / params.pretrain.metrics).read_text())
    assert pretrain["zero_shot_test"]["accuracy"] > 3 * pretrain["chance_accuracy"]


def test_progress_bar_shows_on_a_terminal_with_no_size_and_not_in_a_pipe():
    code = "from numclip.core.progress import progress\nfor _ in progress(range(3), 'demo'): pass"
    piped = subprocess.run(["python", "-c", code], capture_output=True, text=True, timeout=60)
    assert piped.stderr == "" and piped.stdout == ""
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()  # a pseudo-terminal that reports 0 x 0, like many CI runners
    proc = subprocess.Popen(["python", "-c", code], stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=60)
    assert b"demo:" in out and b"0/3" in out
