"""Data drops in data.incoming: added to any source, validated per drop, and never moving an existing
row between splits."""

import csv
import os
from pathlib import Path

import pytest
import yaml
from PIL import Image

from numclip.cli import main
from numclip.config import DataConfig
from numclip.core.errors import NumclipError
from numclip.data import ingest, read_manifest


def _png(path, colour=(0, 128, 255)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format="PNG")


def _table(path, rows, header=("path", "label")):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def _base(root, n=30):
    """A table source of n images, labels 0..4, no splits."""
    for i in range(n):
        _png(root / f"ok{i}.png")
    _table(root / "labels.csv", [(f"ok{i}.png", i % 5) for i in range(n)])
    return root / "labels.csv"


def _folder_drop(folder, labels, per_label):
    for label in labels:
        for i in range(per_label):
            _png(folder / str(label) / f"x{i}.png")


def _cfg(out, table, incoming, **kw):
    kw.setdefault("num_ranks", 5)
    return DataConfig(source="table", path=str(table), manifest=str(out / "manifest.parquet"),
                      rejects=str(out / "rejects.csv"), incoming=str(incoming), **kw)


def _rejects(cfg):
    with open(cfg.rejects, newline="") as f:
        return list(csv.DictReader(f))


def test_table_and_folder_drops_keep_existing_splits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths, as in the pipeline
    _base(tmp_path / "ds")
    before = _cfg(tmp_path / "before", "ds/labels.csv", "incoming")
    report0 = ingest(before)
    m0 = read_manifest(before.manifest)

    given = ["train"] * 5 + ["val"] * 2 + ["test"] * 2
    for i in range(9):
        _png(tmp_path / "incoming" / "batch-a" / "img" / f"a{i}.png")
    _table(tmp_path / "incoming" / "batch-a" / "labels.csv",
           [(f"img/a{i}.png", i % 5, given[i]) for i in range(9)], header=("path", "label", "split"))
    _folder_drop(tmp_path / "incoming" / "batch-b", range(4), 4)
    (tmp_path / "incoming" / "README.md").write_text("drops go here\n")

    after = _cfg(tmp_path / "after", "ds/labels.csv", "incoming")
    report = ingest(after)
    m = read_manifest(after.manifest)

    assert len(m.rows) == 30 + 9 + 16 and report.n_rejected == 0 and report.n_total == 55
    assert all(m.abs_path(r).is_file() for r in m.rows)
    assert m.images_root == tmp_path.resolve(), "the common folder of ds/ and incoming/<drop>/"
    base = [r for r in m.rows if r.source_row.startswith("ds/labels.csv:")]
    assert [(r.path, r.split, r.source_row) for r in base] == [
        (f"ds/{r.path}", r.split, r.source_row) for r in m0.rows], "base rows and splits unchanged"

    a = [r for r in m.rows if r.path.startswith("incoming/batch-a/")]
    assert [(r.path, r.split, r.source_row) for r in a] == [
        (f"incoming/batch-a/img/a{i}.png", given[i], f"incoming/batch-a/labels.csv:{i + 2}")
        for i in range(9)], "a drop's own splits are kept"

    alone = DataConfig(source="folder", path="incoming/batch-b", num_ranks=5, incoming="none",
                       manifest="alone/manifest.parquet", rejects="alone/rejects.csv")
    ingest(alone)
    b = {r.path: r.split for r in m.rows if r.path.startswith("incoming/batch-b/")}
    assert b == {f"incoming/batch-b/{r.path}": r.split for r in read_manifest(alone.manifest).rows}, \
        "a drop is split on its own rows alone"
    assert set(b.values()) == {"train", "val", "test"}
    assert all(r.source_row == r.path for r in m.rows if r.path in b), "source_row names the drop"

    assert report.drop_rows == {"batch-a": 9, "batch-b": 16} and report0.drop_rows == {}
    assert "25 rows from 2 drops in incoming (batch-a, batch-b)" in report.summary()
    assert "drop" not in report0.summary().replace(str(tmp_path), "")


def test_synthetic_source_plus_a_drop(tmp_path):
    synthetic = {"num_images": 60, "image_size": 16, "output_dir": str(tmp_path / "data" / "synthetic")}
    incoming = tmp_path / "incoming"

    def run(name):
        cfg = DataConfig(num_ranks=4, synthetic=synthetic, incoming=str(incoming),
                         manifest=str(tmp_path / name / "manifest.parquet"),
                         rejects=str(tmp_path / name / "rejects.csv"))
        return ingest(cfg), read_manifest(cfg.manifest)

    _, m0 = run("before")
    _folder_drop(incoming / "new", range(4), 3)
    report, m = run("after")
    assert m.images_root == tmp_path.resolve() and len(m.rows) == 60 + 12
    assert all(m.abs_path(r).is_file() for r in m.rows)
    assert [(r.path, r.split, r.caption) for r in m.rows[:60]] == [
        (f"data/synthetic/{r.path}", r.split, r.caption) for r in m0.rows]
    assert {r.path.split("/")[2] for r in m.rows[60:]} == {"0", "1", "2", "3"}
    assert {r.split for r in m.rows[60:]} == {"train", "val", "test"}, "3 per label: one in each split"
    assert "12 rows from 1 drop in" in report.summary()


def test_rejects_in_drops_name_the_drop_file_and_line(tmp_path):
    table = _base(tmp_path / "ds")
    incoming = tmp_path / "incoming"
    bad = incoming / "bad"
    _png(bad / "good.png")
    _png(bad / "nine.png")
    _table(bad / "labels.csv", [("good.png", 1), ("gone.png", 2), ("nine.png", 9),
                                ("../../ds/ok0.png", 0)])
    _png(incoming / "loose" / "top.png")  # a folder drop with an image above any label folder
    _folder_drop(incoming / "loose", [2], 2)
    cfg = _cfg(tmp_path / "out", table, incoming, max_reject_fraction=1.0)
    report = ingest(cfg)

    assert _rejects(cfg) == [
        {"source_row": f"{bad}/labels.csv:3", "path": "gone.png", "label": "2", "reason": "file not found"},
        {"source_row": f"{bad}/labels.csv:4", "path": "nine.png", "label": "9",
         "reason": "label 9 outside [0, 5)"},
        {"source_row": f"{bad}/labels.csv:5", "path": "../../ds/ok0.png", "label": "0",
         "reason": "path escapes the images root"},
        {"source_row": f"{incoming}/loose/top.png", "path": "top.png", "label": "",
         "reason": "missing label"},
    ]
    m = read_manifest(cfg.manifest)
    assert len(m.rows) + report.n_rejected == report.n_total == 30 + 4 + 3, "nothing lost silently"
    assert report.drop_rows == {"bad": 1, "loose": 2}


def test_reject_fraction_counts_every_source(tmp_path):
    table = _base(tmp_path / "ds")
    _table(tmp_path / "incoming" / "d" / "labels.csv", [(f"gone{i}.png", 0) for i in range(10)])
    cfg = _cfg(tmp_path / "out", table, tmp_path / "incoming")
    with pytest.raises(NumclipError, match=r"10 of 40 rows rejected \(25.0% > max_reject_fraction"):
        ingest(cfg)
    assert len(_rejects(cfg)) == 10 and not os.path.exists(cfg.manifest)


def test_an_image_reached_from_two_sources_is_ingested_once(tmp_path):
    incoming = tmp_path / "ds" / "incoming"  # inside the base's images root: the roots overlap
    _folder_drop(incoming / "d", [1], 3)
    table = _base(tmp_path / "ds")
    with open(table, "a", newline="") as f:
        csv.writer(f).writerow(("incoming/d/1/x0.png", 1))
    cfg = _cfg(tmp_path / "out", table, incoming, max_reject_fraction=1.0)
    ingest(cfg)
    m = read_manifest(cfg.manifest)
    assert len(m.rows) == 33 and len({r.path for r in m.rows}) == 33
    assert _rejects(cfg) == [{"source_row": f"{incoming}/d/1/x0.png", "path": "1/x0.png", "label": "1",
                              "reason": f"duplicate path (first at {table}:32)"}]


def test_no_drops_is_byte_identical_to_a_readme_only_incoming(tmp_path):
    table = _base(tmp_path / "ds")
    outputs = []
    for name in ("missing", "empty", "readme"):
        incoming = tmp_path / f"incoming-{name}"
        if name != "missing":
            incoming.mkdir()
        if name == "readme":
            (incoming / "README.md").write_text("drops go here\n")
            (incoming / ".DS_Store").write_bytes(b"\0")
        cfg = _cfg(tmp_path / name, table, incoming)
        report = ingest(cfg)
        assert report.drop_rows == {} and "drop" not in report.summary().replace(str(tmp_path), "")
        outputs.append((Path(cfg.manifest).read_bytes(), Path(cfg.rejects).read_bytes()))
        m = read_manifest(cfg.manifest)
        assert m.images_root == (tmp_path / "ds").resolve() and m.rows[0].path == "ok0.png"
    assert outputs[0] == outputs[1] == outputs[2]


def test_a_file_directly_in_incoming_is_an_error_naming_it(tmp_path):
    table = _base(tmp_path / "ds")
    incoming = tmp_path / "incoming"
    _png(incoming / "stray.png")
    with pytest.raises(NumclipError, match=r"stray.png lies directly in the incoming folder .*"
                                           r"each drop must be its own folder"):
        ingest(_cfg(tmp_path / "out", table, incoming))


def test_two_tables_in_one_drop_is_an_error_naming_the_folder(tmp_path):
    table = _base(tmp_path / "ds")
    drop = tmp_path / "incoming" / "twice"
    _table(drop / "a.csv", [])
    _table(drop / "b.parquet", [])
    with pytest.raises(NumclipError, match=f"drop {drop} has 2 table files at its top "
                                           r"\(a.csv, b.parquet\)"):
        ingest(_cfg(tmp_path / "out", table, tmp_path / "incoming"))


def test_cli_bad_drop_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _base(tmp_path / "ds")
    _png(tmp_path / "incoming" / "labels.png")
    params = {"data": {"source": "table", "path": "ds/labels.csv", "num_ranks": 5}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    code = main(["ingest", "--params", "p.yaml"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("numclip ingest: error: incoming/labels.png lies directly in the incoming")
    assert "Traceback" not in err and not (tmp_path / "data" / "manifest.parquet").exists()
