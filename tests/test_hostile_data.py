"""Hostile data (issue 16): tables with generated bad rows, folders of special files and odd names,
and images of every mode and depth. Each bad row or image is a reject with a reason, every valid
row is kept, and every image that loads has exactly the expected pixels."""

from __future__ import annotations

import csv
import decimal
import random
import struct
import typing
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hostile import (
    K,
    deadline,
    one_line_error,
    special_files,
    write_image,
)
from PIL import Image

from numclip.cli import main
from numclip.data import load_image, read_manifest, read_table

# ------------------------------------------------------------------------------------------- tables

VALID_ROWS = 12


def _bad_labels() -> list[str]:
    """Label texts that are not a rank in [0, K): generated from digits and their look-alikes."""
    out = []
    for digit in "0123":
        out += [f"{digit}_{digit}", f"{digit}e0", f"0x{digit}", f"0b{digit}", f"{digit}.5", f"{digit}/2",
                f"{digit}abc", f"{digit} {digit}", f"{digit}\u00a0{digit}"]
        for zero in (0x0660, 0x0966, 0xFF10, 0x1D7CE):  # Arabic-Indic, Devanagari, fullwidth, math digits
            out.append(chr(zero + int(digit)))
    out += ["nan", "NaN", "inf", "-inf", "-1", str(K), "1e9", "True", "None", "\x00", "½", "²", "", " "]
    return out


def _bad_paths(root: Path) -> list[str]:
    (root / "folder").mkdir()
    write_image(root.parent / "outside.png")
    return ["ok0.png\x00.png", "\x00", "../outside.png", "..\\outside.png", str(root.parent / "outside.png"),
            "folder", ".", "..", "missing.png", "x" * 5000 + ".png", "http://example.com/a.png",
            "~/a.png", "ok0.png/../../outside.png", "ok0.png\n"]


def _table_rows(root: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    valid = []
    for i in range(VALID_ROWS):
        write_image(root / f"ok{i}.png", i)
        valid.append((f"ok{i}.png", ["0", "1", " 2 ", "3.0", "+4", "04"][i % 6]))
    (root / "back\\slash.png").write_bytes((root / "ok0.png").read_bytes())  # a legal Linux name
    valid.append(("back\\slash.png", "1"))
    bad = [(f"ok{i % VALID_ROWS}.png", label) for i, label in enumerate(_bad_labels())]
    bad = [(f"copy{i}.png", label) for i, (_, label) in enumerate(bad)]
    for path, _ in bad:
        (root / path).write_bytes((root / "ok0.png").read_bytes())
    bad += [(path, "1") for path in _bad_paths(root)]
    return valid, bad


@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet"])
def test_every_bad_row_of_a_table_is_rejected_and_every_valid_row_kept(kind, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "ds"
    valid, bad = _table_rows(root)
    rows = valid + bad
    random.Random(kind).shuffle(rows)
    table = root / f"labels.{kind}"
    if kind == "parquet":
        pq.write_table(pa.table({"path": [p for p, _ in rows], "label": [v for _, v in rows]}), table)
    else:
        with open(table, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, delimiter="\t" if kind == "tsv" else ",").writerows([("path", "label"), *rows])
    with deadline(60):
        code = main(["ingest", "--set", "data.source=table", "--set", f"data.path=ds/{table.name}",
                     "--set", f"data.num_ranks={K}", "--set", "data.max_reject_fraction=0.95",
                     "--set", "data.incoming=none"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    kept = read_manifest("data/manifest.parquet").rows
    assert sorted(r.path for r in kept) == sorted(p for p, _ in valid)
    assert {r.path: r.label for r in kept}["ok4.png"] == 4
    with open("data/rejects.csv", newline="", encoding="utf-8") as f:
        rejects = list(csv.DictReader(f))
    assert len(rejects) == len(bad) and all(r["reason"] for r in rejects)


def test_parquet_labels_of_every_numeric_type(tmp_path):
    """Integer-valued labels of any Arrow number type are ranks; booleans and fractions are not."""
    from numclip.data.validate import validate

    root = tmp_path / "ds"
    write_image(root / "a.png")
    arrays = {
        **{f"int{b}": pa.array([2], type=getattr(pa, f"int{b}")()) for b in (8, 16, 32, 64)},
        **{f"uint{b}": pa.array([2], type=getattr(pa, f"uint{b}")()) for b in (8, 16, 32, 64)},
        "float32": pa.array([2.0], type=pa.float32()), "float64": pa.array([2.0]),
        "decimal": pa.array([decimal.Decimal("2")], type=pa.decimal128(5, 0)),
        "decimal with zeros": pa.array([decimal.Decimal("2.00")], type=pa.decimal128(5, 2)),
        "string": pa.array(["2"]), "dictionary": pa.array(["2"]).dictionary_encode(),
    }
    for name, labels in arrays.items():
        pq.write_table(pa.table({"path": ["a.png"], "label": labels}), tmp_path / "t.parquet")
        rows, rejects = validate(read_table(tmp_path / "t.parquet"), root, K, verify_images=False)
        assert [r.label for r in rows] == [2] and not rejects, (name, rejects)
    for name, labels in {"bool": pa.array([True]), "fraction": pa.array([decimal.Decimal("2.5")]),
                         "null": pa.array([None], type=pa.int64()), "nan": pa.array([float("nan")])}.items():
        pq.write_table(pa.table({"path": ["a.png"], "label": labels}), tmp_path / "t.parquet")
        rows, rejects = validate(read_table(tmp_path / "t.parquet"), root, K, verify_images=False)
        assert not rows and len(rejects) == 1 and "label" in rejects[0].reason, (name, rejects)


@pytest.mark.parametrize("header", ["path,label,label", "path,label,Label", "path,label, LABEL ",
                                    "path,label,#label", "path,path,label", "label,path,split,split"])
def test_a_column_given_twice_is_an_error_naming_it(header, tmp_path):
    width = len(header.split(","))
    (tmp_path / "t.csv").write_text(header + "\n" + ",".join(["a.png", "1", "2", "3"][:width]) + "\n")
    one_line_error(lambda: read_table(tmp_path / "t.csv"), "appears twice", "t.csv")
    names = [h.strip().lstrip("#") for h in header.split(",")]
    pq.write_table(pa.Table.from_arrays([pa.array(["x"])] * width, names=names), tmp_path / "t.parquet")
    one_line_error(lambda: read_table(tmp_path / "t.parquet"), "appears twice", "t.parquet")


# ------------------------------------------------------------------------------------------ folders


def test_a_folder_source_with_special_files_and_odd_names(tmp_path, monkeypatch, capsys):
    """Pipes, sockets, devices and links named like images are rejects; odd but legal names are kept."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "ds"
    names = ["plain.png", "back\\slash.png", "new\nline.png", "-dash.png", "sp ace.png", "ünï.png",
             "q'uote\".png", "x" * 240 + ".png"]
    for label in range(K):
        for i, name in enumerate(names):
            write_image(root / str(label) / name, label * 10 + i)
    special = special_files(root / "2", ".png")
    with deadline(60):
        code = main(["ingest", "--set", "data.source=folder", "--set", "data.path=ds", "--set",
                     f"data.num_ranks={K}", "--set", "data.max_reject_fraction=0.5", "--set", "data.incoming=none"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    kept = read_manifest("data/manifest.parquet").rows
    assert len(kept) == K * len(names) and {r.path.split("/", 1)[1] for r in kept} == set(names)
    with open("data/rejects.csv", newline="", encoding="utf-8") as f:
        rejects = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}
    expected = {p.name for kind, p in special.items() if kind != "directory"}  # a folder is walked into
    assert set(rejects) == expected and all(rejects.values()), rejects


# ------------------------------------------------------------------------------------------- images


def _png_16bit_rgb(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _image_variants(root: Path) -> typing.Iterator[tuple[str, Path, np.ndarray | None]]:
    """(what, file, the 8-bit RGB pixels it must load as, or None when it must be refused)."""
    rng = np.random.default_rng(16)
    grey16 = rng.integers(0, 65536, (12, 10), dtype=np.uint16)
    grey8 = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    rgb8 = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    rgb16 = rng.integers(0, 65536, (12, 10, 3), dtype=np.uint16)

    def save(name: str, image: Image.Image, **kw) -> Path:
        image.save(root / name, **kw)
        return root / name
    as_rgb = lambda grey: np.repeat(grey[..., None], 3, axis=2)  # noqa: E731
    for fmt in ("png", "tiff"):
        yield f"16-bit grey {fmt}", save(f"g16.{fmt}", Image.fromarray(grey16)), as_rgb((grey16 >> 8).astype(np.uint8))
        for fmt8 in ("L", "RGB"):
            pixels = grey8 if fmt8 == "L" else rgb8
            expected = as_rgb(grey8) if fmt8 == "L" else rgb8
            yield f"8-bit {fmt8} {fmt}", save(f"{fmt8}8.{fmt}", Image.fromarray(pixels)), expected
    yield "RGB bmp", save("rgb.bmp", Image.fromarray(rgb8)), rgb8
    yield "RGB lossless webp", save("rgb.webp", Image.fromarray(rgb8), lossless=True), rgb8
    _png_16bit_rgb(root / "rgb16.png", rgb16)
    yield "16-bit RGB png", root / "rgb16.png", (rgb16 >> 8).astype(np.uint8)
    bits = grey8 > 127
    yield "1-bit", save("bits.png", Image.fromarray(bits)), as_rgb(np.where(bits, 255, 0).astype(np.uint8))
    rgba = np.dstack([rgb8, grey8])
    yield "RGBA", save("rgba.png", Image.fromarray(rgba, "RGBA")), rgb8
    yield "grey with alpha", save("la.png", Image.fromarray(np.dstack([grey8, grey8]), "LA")), as_rgb(grey8)
    floats = grey16.astype(np.float32) / 65535
    scaled = np.rint(floats.astype(np.float64) * 255).astype(np.uint8)
    yield "float in [0, 1]", save("f01.tiff", Image.fromarray(floats)), as_rgb(scaled)
    yield "float beyond 1", save("f255.tiff", Image.fromarray(floats * 255)), None
    yield "float NaN", save("fnan.tiff", Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32))), None
    yield "32-bit integer", save("i32.tiff", Image.fromarray(grey16.astype(np.int32) * 1000)), None
    whole = (root / "L8.png").read_bytes()
    for cut in (0, 8, 16, 33, len(whole) // 2):
        (root / f"cut{cut}.png").write_bytes(whole[:cut])
        yield f"png cut at {cut}", root / f"cut{cut}.png", None
    (root / "no-end.png").write_bytes(whole[:-12])  # only the IEND chunk is missing: every pixel is there
    yield "png without its end chunk", root / "no-end.png", as_rgb(grey8)
    for kind, path in special_files(root / "special", ".png").items():
        yield kind, path, None


def test_images_load_with_their_pixels_or_are_refused(tmp_path):
    """Each variant loads as exactly the expected 8-bit RGB pixels (16-bit scaled, never clipped), or is a
    one-line NumclipError naming the file; pipes and devices are refused without being opened."""
    checked = refused = 0
    for what, path, expected in _image_variants(tmp_path):
        if expected is None:
            one_line_error(lambda: load_image(path), str(path), what=what)  # noqa: B023
            refused += 1
            continue
        with deadline():
            loaded = np.asarray(load_image(path))
        assert loaded.dtype == np.uint8 and loaded.shape == expected.shape, what
        np.testing.assert_array_equal(loaded, expected, err_msg=what)
        checked += 1
    assert checked >= 12 and refused >= 15
