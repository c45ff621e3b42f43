"""The ingest stage end to end: every reject reason reported, nothing dropped silently, failures explained."""

import csv
import os

import pytest
from PIL import Image

from numclip.config import DataConfig
from numclip.core.errors import NumclipError
from numclip.data import ingest, read_manifest


def _png(path, colour=(0, 128, 255)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format="PNG")


def _cfg(tmp_path, table, **kw):
    return DataConfig(source="table", path=str(table), num_ranks=5,
                      manifest=str(tmp_path / "out" / "manifest.parquet"),
                      rejects=str(tmp_path / "out" / "rejects.csv"), **kw)


def _read_rejects(cfg):
    with open(cfg.rejects, newline="") as f:
        return list(csv.DictReader(f))


def test_every_reject_reason_once_and_nothing_dropped(tmp_path):
    ds = tmp_path / "ds"
    for i in range(10):
        _png(ds / f"ok{i}.png")
    _png(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", ds / "link.png")
    (ds / "folder").mkdir()
    (ds / "text.png").write_text("not an image")
    Image.effect_noise((64, 64), 40).save(ds / "full.png", format="PNG")
    (ds / "cut.png").write_bytes((ds / "full.png").read_bytes()[:200])
    table = ds / "labels.csv"
    spec = [  # (path, label, split, fold, reason; None when the row is valid); row i is line i + 2
        ("ok0.png", "0", "train", "", None),
        ("./ok1.png", "1.0", "train", "1", None),     # normalised path, integral float label
        ("ok2.png", "2", "val", "", None),
        ("ok3.png", "3", "val", "", None),
        (str(ds / "ok4.png"), "4", "test", "", None),  # absolute but inside the root
        ("ok5.png", "0", "test", "", None),
        ("../outside.png", "1", "train", "", "path escapes the images root"),
        ("link.png", "1", "train", "", "path escapes the images root (symlink)"),
        ("", "1", "train", "", "missing path"),
        ("ok4.png", "2", "train", "", f"duplicate path (first at {table}:6)"),
        ("folder", "1", "train", "", "not a file"),
        ("missing.png", "1", "train", "", "file not found"),
        ("ok6.png", "", "train", "", "missing label"),
        ("ok7.png", "3.5", "train", "", "non-integer label '3.5'"),
        ("ok8.png", "7", "train", "", "label 7 outside [0, 5)"),
        ("ok9.png", "1", "training", "", "split 'training' not in train/val/test"),
        ("full.png", "1", "train", "x", "non-integer fold 'x'"),
        ("text.png", "1", "train", "", "unreadable image (not a format PIL can identify)"),
        ("cut.png", "1", "train", "", "truncated image"),
    ]
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split", "fold")] + [s[:4] for s in spec])
    cfg = _cfg(tmp_path, table, max_reject_fraction=1.0)
    report = ingest(cfg)

    expected = [{"source_row": f"{table}:{i + 2}", "path": p, "label": lab, "reason": why}
                for i, (p, lab, _, _, why) in enumerate(spec) if why]
    assert _read_rejects(cfg) == expected
    assert len({r["reason"] for r in expected}) == len(expected) == 13  # each reason exactly once

    manifest = read_manifest(cfg.manifest)
    assert [(r.path, r.label, r.split, r.fold, r.source_row) for r in manifest.rows] == [
        ("ok0.png", 0, "train", None, f"{table}:2"), ("ok1.png", 1, "train", 1, f"{table}:3"),
        ("ok2.png", 2, "val", None, f"{table}:4"), ("ok3.png", 3, "val", None, f"{table}:5"),
        ("ok4.png", 4, "test", None, f"{table}:6"), ("ok5.png", 0, "test", None, f"{table}:7")]
    assert manifest.images_root == ds.resolve() and manifest.num_ranks == 5
    assert len(manifest.rows) + report.n_rejected == report.n_total == len(spec)
    assert report.split_counts == {"train": 2, "val": 2, "test": 2}
    assert report.label_counts == {0: 2, 1: 1, 2: 1, 3: 1, 4: 1}
    assert "Ingested 6 of 19 rows" in report.summary() and "13 rows rejected" in report.summary()


def _missing_files_table(tmp_path, n_ok, n_missing):
    ds = tmp_path / "ds"
    lines = ["path,label"]
    for i in range(n_ok):
        _png(ds / f"ok{i}.png")
        lines.append(f"ok{i}.png,{i % 5}")
    lines += [f"gone{i}.png,0" for i in range(n_missing)]
    (ds / "labels.csv").write_text("\n".join(lines) + "\n")
    return ds / "labels.csv"


def test_too_many_rejects_fails_after_writing_rejects(tmp_path):
    cfg = _cfg(tmp_path, _missing_files_table(tmp_path, 28, 12))
    with pytest.raises(NumclipError) as e:
        ingest(cfg)
    assert str(e.value) == (f"ingest: 12 of 40 rows rejected (30.0% > max_reject_fraction 5.0%); "
                            f"see {cfg.rejects} for each row and reason")
    assert [r["reason"] for r in _read_rejects(cfg)] == ["file not found"] * 12
    assert not os.path.exists(cfg.manifest)


def test_rejects_file_written_with_header_when_empty(tmp_path):
    cfg = _cfg(tmp_path, _missing_files_table(tmp_path, 30, 0))
    report = ingest(cfg)
    assert open(cfg.rejects).read() == "source_row,path,label,reason\n"
    assert report.n_rejected == 0 and sum(report.split_counts.values()) == 30
    assert min(report.split_counts.values()) >= 5  # every label (6 images each) in every split


def test_empty_split_fails_naming_it(tmp_path):
    ds = tmp_path / "ds"
    lines = ["path,label,split"]
    for i in range(10):
        _png(ds / f"{i}.png")
        lines.append(f"{i}.png,{i % 2},{'train' if i < 7 else 'val'}")
    (ds / "labels.csv").write_text("\n".join(lines) + "\n")
    cfg = _cfg(tmp_path, ds / "labels.csv")
    with pytest.raises(NumclipError, match=r"split 'test' is empty \(train 7, val 3, test 0\)"):
        ingest(cfg)
    assert not os.path.exists(cfg.manifest) and os.path.exists(cfg.rejects)


def test_no_rows_fails(tmp_path):
    (tmp_path / "labels.csv").write_text("path,label\n")
    with pytest.raises(NumclipError, match="table source .*labels.csv.* has no rows"):
        ingest(_cfg(tmp_path, tmp_path / "labels.csv"))


def test_synthetic_ingest(tmp_path):
    cfg = DataConfig(manifest=str(tmp_path / "data" / "manifest.parquet"),
                     rejects=str(tmp_path / "data" / "rejects.csv"),
                     synthetic={"num_images": 80, "output_dir": str(tmp_path / "data" / "synthetic")})
    report = ingest(cfg)
    m = read_manifest(cfg.manifest)
    assert len(m.rows) == 80 and report.n_rejected == 0 and m.num_ranks == 10
    assert m.images_root == (tmp_path / "data" / "synthetic").resolve()
    assert all(r.caption.startswith("a photo of ") and m.abs_path(r).is_file() for r in m.rows)
    assert report.split_counts == m.counts() and all(n > 0 for n in m.counts().values())
