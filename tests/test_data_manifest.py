"""Manifest round trip and the errors a broken manifest gives."""

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from numclip.core.errors import NumclipError
from numclip.data.manifest import Manifest, ManifestRow, read_manifest, write_manifest


def _manifest(root):
    rows = [ManifestRow("a/1.png", 0, "train", "a photo of one red circle", "g1", 2, "labels.csv:2"),
            ManifestRow("b.png", 4, "val", None, None, None, "labels.csv:3"),
            ManifestRow("c.png", 2, "test", source_row="labels.csv:4")]
    return Manifest(rows=rows, images_root=root, num_ranks=5)


def test_round_trip_and_relative_images_root(tmp_path):
    m = _manifest(tmp_path / "proj" / "images")
    path = tmp_path / "proj" / "data" / "manifest.parquet"
    write_manifest(m, path)
    assert [p.name for p in path.parent.iterdir()] == ["manifest.parquet"]  # no temp file left
    meta = pq.read_schema(path).metadata
    assert meta[b"numclip.images_root"] == b"../images" and meta[b"numclip.num_ranks"] == b"5"
    back = read_manifest(path)
    assert back == Manifest(rows=m.rows, images_root=(tmp_path / "proj" / "images").resolve(), num_ranks=5)
    assert back.counts() == {"train": 1, "val": 1, "test": 1}
    assert back.split("val") == [m.rows[1]]
    assert back.abs_path(m.rows[0]) == (tmp_path / "proj" / "images" / "a" / "1.png").resolve()
    types = pq.read_schema(path)
    assert str(types.field("label").type) == "int64" and str(types.field("fold").type) == "int64"

    shutil.move(tmp_path / "proj", tmp_path / "moved")  # the root travels with the project
    assert read_manifest(tmp_path / "moved" / "data" / "manifest.parquet").images_root == \
        (tmp_path / "moved" / "images").resolve()


def test_unknown_split_name_is_an_error(tmp_path):
    with pytest.raises(NumclipError, match="unknown split 'validation'"):
        _manifest(tmp_path).split("validation")


def test_read_errors(tmp_path):
    with pytest.raises(NumclipError, match="manifest not found"):
        read_manifest(tmp_path / "none.parquet")
    (tmp_path / "text.parquet").write_text("hello")
    with pytest.raises(NumclipError, match="not a readable Parquet file"):
        read_manifest(tmp_path / "text.parquet")
    pq.write_table(pa.table({"path": ["a.png"], "label": [0]}), tmp_path / "cols.parquet")
    with pytest.raises(NumclipError, match="lacks columns split, caption, group, fold, source_row"):
        read_manifest(tmp_path / "cols.parquet")
    write_manifest(_manifest(tmp_path), tmp_path / "ok.parquet")
    table = pq.read_table(tmp_path / "ok.parquet")
    pq.write_table(table.replace_schema_metadata({}), tmp_path / "nometa.parquet")
    with pytest.raises(NumclipError, match="lacks schema metadata numclip.images_root, numclip.num_ranks"):
        read_manifest(tmp_path / "nometa.parquet")
    meta = dict(table.schema.metadata)
    meta[b"numclip.num_ranks"] = b"3"
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "range.parquet")
    with pytest.raises(NumclipError, match=r"row 1: .*label 4.*label in \[0, 3\)"):
        read_manifest(tmp_path / "range.parquet")


def test_write_refuses_rows_without_split(tmp_path):
    m = Manifest([ManifestRow("a.png", 0, "", source_row="t:2")], tmp_path, 3)
    with pytest.raises(NumclipError, match="t:2 has split ''"):
        write_manifest(m, tmp_path / "m.parquet")
    assert not (tmp_path / "m.parquet").exists()
