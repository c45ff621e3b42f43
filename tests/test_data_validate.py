"""Validation: every bad row becomes a reject with a short reason; valid rows come out normalised."""

import os

import pytest
from PIL import Image

from numclip.core.errors import NumclipError
from numclip.data.manifest import Candidate, ManifestRow
from numclip.data.validate import validate


@pytest.fixture
def root(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "sub/c.png"):
        Image.new("RGB", (8, 8), (200, 0, 0)).save(images / name, format="PNG")
    return images


def _reasons(candidates, root, k=5, **kw):
    rows, rejects = validate(candidates, root, k, **kw)
    assert len(rows) + len(rejects) == len(candidates)
    return rows, [r.reason for r in rejects]


@pytest.mark.parametrize("label, expected", [
    (3, 3), (3.0, 3), ("3", 3), (" 4 ", 4), ("2.0", 2), ("0", 0)])
def test_integer_labels_accepted(root, label, expected):
    rows, reasons = _reasons([Candidate("a.png", label, None, source_row="t:2")], root)
    assert reasons == [] and rows == [ManifestRow("a.png", expected, "", source_row="t:2")]


@pytest.mark.parametrize("label, reason", [
    ("3.5", "non-integer label '3.5'"), ("abc", "non-integer label 'abc'"),
    (float("nan"), "non-integer label 'nan'"), ("inf", "non-integer label 'inf'"),
    (float("-inf"), "non-integer label '-inf'"), (True, "non-integer label 'True'"),
    (None, "missing label"), ("  ", "missing label"),
    (5, "label 5 outside [0, 5)"), ("-1", "label -1 outside [0, 5)")])
def test_bad_labels_rejected(root, label, reason):
    assert _reasons([Candidate("a.png", label, None)], root) == ([], [reason])


def test_paths_normalised_before_duplicate_check(root):
    candidates = [Candidate("./sub/c.png", 1, "train", source_row="t:2"),
                  Candidate("sub\\c.png", 1, "train", source_row="t:3"),
                  Candidate(str(root / "sub" / ".." / "sub" / "c.png"), 1, "train", source_row="t:4"),
                  Candidate(str(root / "a.png"), 2, "Val", source_row="t:5")]
    rows, reasons = _reasons(candidates, root)
    assert [(r.path, r.split) for r in rows] == [("sub/c.png", "train"), ("a.png", "val")]
    assert reasons == ["duplicate path (first at t:2)"] * 2


def test_paths_escaping_the_root(root, tmp_path):
    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8)).save(outside, format="PNG")
    os.symlink(outside, root / "link.png")
    os.symlink(root / "a.png", root / "inner_link.png")
    candidates = [Candidate("../outside.png", 0, None), Candidate(str(outside), 0, None),
                  Candidate("sub/../../outside.png", 0, None), Candidate("link.png", 0, None),
                  Candidate("inner_link.png", 0, None), Candidate("", 0, None), Candidate("sub", 0, None)]
    rows, reasons = _reasons(candidates, root)
    assert [r.path for r in rows] == ["inner_link.png"]
    assert reasons == ["path escapes the images root"] * 3 + [
        "path escapes the images root (symlink)", "missing path", "not a file"]


def test_image_checks_and_verify_images_off(root):
    (root / "text.png").write_text("hello")
    big = root / "big.png"
    Image.effect_noise((64, 64), 50).save(big, format="PNG")
    (root / "cut.png").write_bytes(big.read_bytes()[:300])
    candidates = [Candidate(p, 0, None) for p in ("text.png", "cut.png", "gone.png", "b.png")]
    _, reasons = _reasons(candidates, root)
    assert reasons == ["unreadable image (not a format PIL can identify)", "truncated image",
                       "file not found"]
    rows, reasons = _reasons(candidates, root, verify_images=False)
    assert [r.path for r in rows] == ["text.png", "cut.png", "b.png"] and reasons == ["file not found"]


def test_order_path_then_label_then_image(root):
    (root / "text.png").write_text("hello")
    candidates = [Candidate("../x.png", "abc", None), Candidate("gone.png", "abc", None),
                  Candidate("text.png", "abc", None, source_row="t:4"),
                  Candidate("text.png", 1, "testing", source_row="t:5")]
    _, reasons = _reasons(candidates, root)
    assert reasons == ["path escapes the images root", "file not found", "non-integer label 'abc'",
                       "duplicate path (first at t:4)"]


def test_split_and_fold_values(root):
    rows, reasons = _reasons([Candidate("a.png", 0, "training"), Candidate("b.png", 0, "test", fold="x"),
                              Candidate("sub/c.png", 0, " TEST ", fold="2", group="g")], root)
    assert reasons == ["split 'training' not in train/val/test", "non-integer fold 'x'"]
    assert rows == [ManifestRow("sub/c.png", 0, "test", group="g", fold=2)]


def test_missing_images_root_is_an_error(tmp_path):
    with pytest.raises(NumclipError, match="images root .*nope is not a folder"):
        validate([Candidate("a.png", 0, None)], tmp_path / "nope", 3)
