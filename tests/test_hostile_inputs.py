"""Hostile inputs across the CLI (issue 9, point 6): each bad row becomes a rejects entry and no valid
row is lost; each bad file or param is one clear error, exit code 2, no traceback."""

import csv
import os

import pytest
from PIL import Image

from numclip.cli import main
from numclip.data import read_manifest

VALID = 10  # valid rows beside each bad one: none may be lost


def _png(path, colour=(0, 128, 255), size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="PNG")


def _dataset(root):
    for i in range(VALID):
        _png(root / f"ok{i}.png", (20 * i, 100, 50))
    return [(f"ok{i}.png", str(i % 4)) for i in range(VALID)]


def _truncated(root):
    Image.effect_noise((64, 64), 40).save(root / "full.png", format="PNG")
    (root / "bad.png").write_bytes((root / "full.png").read_bytes()[:150])
    (root / "full.png").unlink()
    return "bad.png", "1"


def _zero_bytes(root):
    (root / "bad.png").write_bytes(b"")
    return "bad.png", "1"


def _not_an_image(root):
    (root / "bad.png").write_text("<html>not an image</html>")
    return "bad.png", "1"


def _huge_dimensions(root):
    """A valid PNG header claiming 100000 x 100000 pixels: a decompression bomb."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                   + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return "bad.png", "1"


def _label(value):
    """A readable image whose label is `value`."""
    def make(root):
        _png(root / "bad.png")
        return "bad.png", value
    return make


def _escapes_root(root):
    _png(root.parent / "outside.png")
    return "../outside.png", "1"


def _absolute_outside(root):
    _png(root.parent / "elsewhere.png")
    return str(root.parent / "elsewhere.png"), "1"


BAD_ROWS = {  # kind -> (make the bad row, words of the expected reject reason)
    "truncated image": (_truncated, "truncated"),
    "zero-byte image": (_zero_bytes, "image"),
    "not an image": (_not_an_image, "image"),
    "huge dimensions": (_huge_dimensions, "image"),
    "label as text": (_label("three"), "label"),
    "NaN label": (_label("nan"), "label"),
    "inf label": (_label("inf"), "label"),
    "negative label": (_label("-1"), "label"),
    "path escaping the data root": (_escapes_root, "escapes"),
    "absolute path outside the root": (_absolute_outside, "escapes"),
}


def _ingest(tmp_path, capsys, table_name="labels.csv", *extra):
    code = main(["ingest", "--set", "data.source=table", "--set", f"data.path=ds/{table_name}",
                 "--set", "data.num_ranks=4", "--set", "data.max_reject_fraction=0.5",
                 "--set", "data.incoming=none", *extra])
    return code, capsys.readouterr()


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_bad_row_is_rejected_and_no_valid_row_lost(kind, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "ds"
    rows = _dataset(root)
    make, reason = BAD_ROWS[kind]
    bad = make(root)
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows[:5], bad, *rows[5:]])
    code, out = _ingest(tmp_path, capsys)
    assert code == 0, out.err
    assert "Traceback" not in out.err
    assert len(read_manifest("data/manifest.parquet").rows) == VALID
    with open("data/rejects.csv", newline="") as f:
        rejects = list(csv.DictReader(f))
    assert len(rejects) == 1 and rejects[0]["source_row"].endswith("labels.csv:7"), rejects
    assert reason in rejects[0]["reason"], rejects[0]


def test_non_utf8_file_name_in_a_folder_source(tmp_path, monkeypatch, capsys):
    """A file name that is not UTF-8 (possible on Linux) must not crash the manifest writer."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "ds"
    for label in range(4):
        for i in range(3):
            _png(root / str(label) / f"ok{i}.png", (60 * label, 20 * i, 90))
    raw = os.fsencode(root / "1") + b"/bad-\xff.png"
    Image.new("RGB", (8, 8)).save(open(raw, "wb"), format="PNG")
    code = main(["ingest", "--set", "data.source=folder", "--set", "data.path=ds", "--set", "data.num_ranks=4",
                 "--set", "data.max_reject_fraction=0.5", "--set", "data.incoming=none"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == 0, err
    assert len(read_manifest("data/manifest.parquet").rows) == 12
    with open("data/rejects.csv", newline="") as f:
        rejects = list(csv.DictReader(f))
    assert len(rejects) == 1 and "UTF-8" in rejects[0]["reason"], rejects


@pytest.mark.parametrize("content, needle", [
    ("", "is empty"),
    ("path,caption\nok0.png,hi\n", "missing required column(s) label"),
    ("path,label\nok0.png\n", "labels.csv:2 has 1 fields"),
    (b"path,label\n\xff\xfe,1\n", "is not UTF-8"),
])
def test_broken_table_is_one_clear_error(content, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "ds"
    _dataset(root)
    path = root / "labels.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, out = _ingest(tmp_path, capsys)
    assert code == 2 and needle in out.err and "Traceback" not in out.err, out.err


@pytest.mark.parametrize("argv, needle", [
    (["train", "--set", "train.lr.rank=fast"], "train.lr.rank"),
    (["train", "--set", "data.num_ranks=[1, 2]"], "data.num_ranks"),
    (["train", "--set", "pretrain.counting.negatives=some"], "pretrain.counting.negatives"),
    (["train", "--method", "ordinalclip2"], "unknown method 'ordinalclip2'"),
    (["evaluate", "--method", "zeroshot;rm -rf"], "unknown method"),
])
def test_bad_params_and_method_names(argv, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err


def test_prompt_file_with_the_wrong_line_count(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "words.txt").write_text("one\ntwo\nthree\n")
    assert main(["prototypes", "--set", "task.rank_words_file=words.txt"]) == 2
    err = capsys.readouterr().err
    assert "(words.txt) has 3 words but data.num_ranks is 10" in err and "Traceback" not in err, err
