"""User mistakes through the CLI: one clear message naming what and where, exit code 2, no traceback."""

import subprocess
import sys

import pytest
from conftest import copy_pipeline

from numclip.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["train", "--set", "train.epochs=lots"], "train.epochs"),
    (["train", "--set", "train.epoch=2"], "train.epoch"),
    (["train", "--method", "numclip9000"], "unknown method 'numclip9000'"),
    (["evaluate", "--params", "missing.yaml"], "params file not found: missing.yaml"),
    (["ingest", "--set", "data.source=table"], "data.path"),
    (["train", "--set", "data.manifest=nowhere/manifest.parquet"], "nowhere/manifest.parquet"),
    (["predict", "x.png", "--model", "nowhere.safetensors"], "model file not found: nowhere.safetensors"),
    (["run", "--set", "model.arch=ViT-Nope", "--set", "data.synthetic.num_images=30"], "model.arch"),
])
def test_user_errors(tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "run":
        copy_pipeline(tmp_path)
    code, err = _run(capsys, *argv)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err


def test_ingest_rejects_are_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "labels.csv").write_text("path,label\nmissing1.png,1\nmissing2.png,2\n")
    code, err = _run(capsys, "ingest", "--set", "data.source=table", "--set", "data.path=labels.csv")
    assert code == 2
    assert "2 of 2" in err and "data/rejects.csv" in err
    assert (tmp_path / "data" / "rejects.csv").read_text().count("file") >= 2


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "numclip.cli", "train", "--set", "train.batch_size=0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train.batch_size" in proc.stderr and "Traceback" not in proc.stderr
