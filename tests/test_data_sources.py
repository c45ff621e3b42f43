"""Source readers: each layout becomes raw candidates with a source_row pointing back at its origin."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from numclip.config import DataConfig
from numclip.core.errors import NumclipError
from numclip.data.sources import read_folder, read_listfile, read_source, read_table


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path, format="PNG")


def test_csv_rows_line_numbers_and_optional_columns(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text('path,label,split,caption,group,fold,extra\n'
                 'a.png,0,train,"two, red",g1,1,x\n'
                 '\n'
                 'b.png,3.0,,,,,\n'
                 'c.png,,test,"multi\nline",g2,,\n'
                 'd.png,abc,val,,,2,\n', encoding="utf-8")
    rows = read_table(f)
    assert [(r.path, r.label, r.split, r.caption, r.group, r.fold) for r in rows] == [
        ("a.png", "0", "train", "two, red", "g1", "1"),
        ("b.png", "3.0", None, None, None, None),
        ("c.png", None, "test", "multi\nline", "g2", None),
        ("d.png", "abc", "val", None, None, "2"),
    ]
    assert [r.source_row for r in rows] == [f"{f}:2", f"{f}:4", f"{f}:5", f"{f}:7"]


def test_csv_without_required_column_names_file_and_columns(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("path,rank\na.png,1\n")
    expected = r"labels\.csv: missing required column\(s\) label; it has columns path, rank"
    with pytest.raises(NumclipError, match=expected):
        read_table(f)


def test_csv_errors_name_the_file_and_line(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(NumclipError, match="empty.csv is empty"):
        read_table(empty)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("path,label\na.png,1\nb.png,2,oops\n")
    with pytest.raises(NumclipError, match=r"ragged\.csv:3 has 3 fields but the header has 2"):
        read_table(ragged)
    with pytest.raises(NumclipError, match="data table not found"):
        read_table(tmp_path / "nope.csv")


def test_parquet_table(tmp_path):
    f = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"path": ["a.png", "b.png"], "label": [1, None],
                             "caption": ["x", None], "fold": [0, None]}), f)
    rows = read_table(f)
    assert [(r.path, r.label, r.split, r.caption, r.fold, r.source_row) for r in rows] == [
        ("a.png", 1, None, "x", 0, f"{f}:row 1"), ("b.png", None, None, None, None, f"{f}:row 2")]
    bad = tmp_path / "bad.pq"
    bad.write_text("not parquet")
    with pytest.raises(NumclipError, match="bad.pq is not a readable Parquet file"):
        read_table(bad)
    pq.write_table(pa.table({"file": ["a.png"]}), tmp_path / "cols.parquet")
    with pytest.raises(NumclipError, match="missing required column.*path, label; it has columns file"):
        read_table(tmp_path / "cols.parquet")


def test_folder_flat_layout(tmp_path):
    for rel in ["0/a.png", "0/b.JPG", "3/c.webp", "big/d.png", "loose.png"]:
        _png(tmp_path / rel)  # the reader goes by extension, not content
    (tmp_path / "0" / "notes.txt").write_text("ignored")
    (tmp_path / ".cache").mkdir()
    _png(tmp_path / ".cache" / "e.png")
    rows = read_folder(tmp_path)
    assert sorted((r.path, r.label, r.split) for r in rows) == [
        ("0/a.png", "0", None), ("0/b.JPG", "0", None), ("3/c.webp", "3", None),
        ("big/d.png", "big", None), ("loose.png", None, None)]


def test_folder_split_layout(tmp_path):
    for rel in ["train/0/a.png", "train/1/b.png", "val/0/c.png", "test/1/d.png"]:
        _png(tmp_path / rel)
    rows = read_folder(tmp_path)
    assert sorted((r.path, r.label, r.split) for r in rows) == [
        ("test/1/d.png", "1", "test"), ("train/0/a.png", "0", "train"),
        ("train/1/b.png", "1", "train"), ("val/0/c.png", "0", "val")]
    with pytest.raises(NumclipError, match="image folder not found"):
        read_folder(tmp_path / "missing")


def test_listfile_comments_blank_and_missing_label(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("# OrdinalCLIP list\nimgs/a.jpg 3 17\n\n   \nimgs/b.jpg\t0\nimgs/c.jpg\n", encoding="utf-8")
    rows = read_listfile(f, split="train")
    assert [(r.path, r.label, r.split, r.source_row) for r in rows] == [
        ("imgs/a.jpg", "3", "train", f"{f}:2"), ("imgs/b.jpg", "0", "train", f"{f}:5"),
        ("imgs/c.jpg", None, "train", f"{f}:6")]


def test_read_source_roots_and_split_paths(tmp_path):
    table = tmp_path / "meta" / "labels.csv"
    table.parent.mkdir()
    table.write_text("path,label,split\na.png,0,val\n")
    rows, root = read_source(DataConfig(source="table", path=str(table)))
    assert root == table.parent.resolve() and rows[0].split == "val"
    rows, root = read_source(DataConfig(source="table", path=str(table), images_root=str(tmp_path)))
    assert root == tmp_path.resolve()

    (tmp_path / "train.txt").write_text("a.png 0\nb.png 1\n")
    (tmp_path / "test.txt").write_text("c.png 2\n")
    cfg = DataConfig(source="listfile", split_paths={"train": str(tmp_path / "train.txt"),
                                                     "test": str(tmp_path / "test.txt")})
    rows, root = read_source(cfg)
    assert [(r.path, r.split) for r in rows] == [("a.png", "train"), ("b.png", "train"), ("c.png", "test")]
    assert root == tmp_path.resolve()

    _png(tmp_path / "imgs" / "2" / "x.png")
    rows, root = read_source(DataConfig(source="folder", path=str(tmp_path / "imgs")))
    assert root == (tmp_path / "imgs").resolve() and rows[0].label == "2"


def test_read_source_synthetic_root_is_output_dir(tmp_path):
    cfg = DataConfig(synthetic={"num_images": 3, "output_dir": str(tmp_path / "syn")})
    rows, root = read_source(cfg)
    assert root == (tmp_path / "syn").resolve() and len(rows) == 3
    assert all((root / r.path).is_file() for r in rows)


@pytest.mark.parametrize("cfg, message", [
    (DataConfig(source="table"), "data.path is required"),
    (DataConfig(source="folder"), "data.path is required"),
    (DataConfig(source="folder", split_paths={"train": "x"}), "data.split_paths applies to table and listfile"),
    (DataConfig(source="table", path="x.csv", split_paths={"train": "y.csv"}), "not both"),
])
def test_read_source_config_mistakes(cfg, message):
    with pytest.raises(NumclipError, match=message):
        read_source(cfg)


def test_split_paths_in_different_folders_need_images_root(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "list.txt").write_text("x.png 0\n")
    cfg = DataConfig(source="listfile", split_paths={"train": str(tmp_path / "a" / "list.txt"),
                                                     "test": str(tmp_path / "b" / "list.txt")})
    with pytest.raises(NumclipError, match="set data.images_root"):
        read_source(cfg)
    rows, root = read_source(cfg.model_copy(update={"images_root": str(tmp_path)}))
    assert root == tmp_path.resolve() and len(rows) == 2
