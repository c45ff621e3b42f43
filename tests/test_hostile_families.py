"""Hostile inputs by family (issue 16): params files, tables, folders, images, model, backbone and head
files, checkpoints and predict inputs. Each test generates its variants (encodings, special files,
metadata shapes, every integer key of the schema...) instead of listing a few; every variant must end
as a reject with a reason, or as a one-line error (exit code 2 through the CLI), within a time bound,
with every valid row kept and every valid image predicted.
"""

from __future__ import annotations

import contextlib
import csv
import decimal
import itertools
import json
import os
import random
import signal
import socket
import struct
import typing
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from numclip.cli import main
from numclip.config import ModelConfig, Params, load_params
from numclip.core.errors import NumclipError
from numclip.data import load_image, read_manifest, read_table
from numclip.models.backbone import create_backbone, save_backbone
from numclip.models.head import save_prototypes
from numclip.models.ordinal import build_model, load_model, save_model
from numclip.training.checkpoint import load_checkpoint, save_checkpoint
from numclip.training.resume import Checkpoints, TrainState, UnusableCheckpoint

SECONDS = 20  # the bound on any one variant: a hang fails the test instead of stalling CI
K = 5


class Hang(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float = SECONDS):
    """Raise Hang in the main thread if the block takes longer (interrupts a blocking open())."""
    def stop(*_):
        raise Hang(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def one_line_error(call, *needles: str, what: str = "") -> str:
    """`call()` raises NumclipError within the deadline, with a one-line message holding `needles`."""
    with deadline():
        try:
            call()
        except NumclipError as e:
            message = str(e)
        else:
            pytest.fail(f"{what or needles}: no error")
    assert "\n" not in message, (what, message)
    for needle in needles:
        assert needle in message, (what, needle, message)
    return message


def cli_error(capsys, argv: list[str], *needles: str) -> str:
    """The CLI exits with 2 and prints one line naming `needles`, without a traceback."""
    with deadline():
        code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, (code, err)
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def _special_files(folder: Path, suffix: str) -> dict[str, Path]:
    """Things that are not regular files but carry a file's name: pipes, sockets, devices, links."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    made["fifo"] = folder / f"pipe{suffix}"
    os.mkfifo(made["fifo"])
    made["socket"] = folder / f"sock{suffix}"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(made["socket"]))
    sock.close()
    made["device"] = folder / f"zero{suffix}"
    made["device"].symlink_to("/dev/zero")
    made["link to fifo"] = folder / f"tofifo{suffix}"
    made["link to fifo"].symlink_to(made["fifo"].name)
    made["broken link"] = folder / f"broken{suffix}"
    made["broken link"].symlink_to("nowhere")
    made["link loop"] = folder / f"loop{suffix}"
    made["link loop"].symlink_to(made["link loop"].name)
    made["directory"] = folder / f"folder{suffix}"
    made["directory"].mkdir()
    return made


# ------------------------------------------------------------------------------------------- params


def _keys_of_type(kind: type) -> list[str]:
    """Every dotted params key whose type is `kind` (or an optional one), read from the schema."""
    keys = []

    def walk(model, prefix):
        for name, field in model.model_fields.items():
            kinds = {field.annotation, *typing.get_args(field.annotation)} - {type(None)}
            nested = [k for k in kinds if isinstance(k, type) and hasattr(k, "model_fields")]
            if nested:
                walk(nested[0], f"{prefix}{name}.")
            elif kinds == {kind}:
                keys.append(f"{prefix}{name}")
    walk(Params, "")
    return keys


INTEGER_KEYS, FLOAT_KEYS = _keys_of_type(int), _keys_of_type(float)


def test_the_schema_has_keys_to_check():
    assert len(INTEGER_KEYS) >= 15 and "train.epochs" in INTEGER_KEYS and "data.num_ranks" in INTEGER_KEYS
    assert len(FLOAT_KEYS) >= 10 and "train.lr.rank" in FLOAT_KEYS


@pytest.mark.parametrize("value", ["true", "false", "yes", "on", "1.5", "'3'", "[3]", "{a: 1}", "3abc"])
def test_every_integer_key_refuses_what_is_not_an_integer(value):
    """Strict integers: a boolean (YAML's true), a fraction, a quoted number or a list is a mistake."""
    for key in INTEGER_KEYS:
        one_line_error(lambda: load_params(None, [f"{key}={value}"]), key)  # noqa: B023 (called at once)


def test_seeds_and_sizes_that_would_overflow_or_never_finish_are_refused():
    """Seeds that NumPy or torch cannot take, and a rank count no task has (it would never finish)."""
    seeds = [k for k in INTEGER_KEYS if k.endswith("seed")]
    assert len(seeds) >= 4
    for key, value in [*[(k, v) for k in seeds for v in (-1, 2**32, 10**30)], ("data.num_ranks", 10**26),
                       ("methods.ordinalclip.num_base_ranks", 10**12), ("data.synthetic.num_images", 10**12)]:
        one_line_error(lambda: load_params(None, [f"{key}={value}"]), key)  # noqa: B023


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "true", "'0.5'", "[0.5]", "fast"])
def test_every_float_key_refuses_what_is_not_a_finite_number(value):
    """A NaN or infinite learning rate or weight would train garbage without a word."""
    for key in FLOAT_KEYS:
        one_line_error(lambda: load_params(None, [f"{key}={value}"]), key)  # noqa: B023 (called at once)


def _alias_bomb(width: int, depth: int) -> str:
    anchors = ["&a0 [" + ", ".join(["x"] * width) + "]"]
    anchors += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, depth)]
    return "[" + ", ".join(anchors) + "]"


def _params_variants(root: Path) -> typing.Iterator[tuple[str, Path, str]]:
    """(what, file, a word the error must hold) for files that can never be a params file."""
    valid = "data:\n  num_ranks: 7  # é\ntrain:\n  epochs: 2\n"

    def write(name: str, data: bytes) -> Path:
        path = root / name
        path.write_bytes(data)
        return path

    for encoding in ("latin-1", "cp1252", "utf-16", "utf-16-le", "utf-16-be", "utf-32"):
        yield f"encoded as {encoding}", write(f"{encoding}.yaml", valid.encode(encoding)), "UTF-8"
    rng = random.Random(16)
    for i in range(4):
        yield f"random bytes {i}", write(f"random{i}.yaml", bytes(rng.randrange(128, 256) for _ in range(64))), ""
    yield "a NUL byte", write("nul.yaml", valid.replace("7", "7\0").encode()), ""
    for key in ("data.num_ranks", "task.rank_words", "train.lr", "extra"):
        section, name = key.split(".") if "." in key else (key, "x")
        for width, depth in ((9, 9), (50, 4), (3, 20)):
            text = f"{section}:\n  {name}: {_alias_bomb(width, depth)}\n"
            yield f"alias bomb {width}^{depth} under {key}", write(f"bomb-{key}-{width}-{depth}.yaml",
                                                                   text.encode()), str(root)
    for depth in (100, 1_000, 100_000):
        yield f"flow nesting {depth}", write(f"deep{depth}.yaml",
                                             f"data:\n  num_ranks: {'[' * depth}{']' * depth}\n".encode()), ""
    yield "block nesting", write("block.yaml", "".join(f"{'  ' * i}k{i}:\n" for i in range(200)).encode()), ""
    yield "a list", write("list.yaml", b"- data\n- train\n"), "mapping"
    yield "a scalar", write("scalar.yaml", b"42\n"), "mapping"
    yield "a duplicate key", write("dup.yaml", b"train:\n  epochs: 2\n  epochs: 3\n"), "duplicate key 'epochs'"
    yield "a duplicate section", write("dupsec.yaml", b"train: {}\ndata: {}\ntrain: {}\n"), "duplicate key"
    yield "a section that is a list", write("seclist.yaml", b"train: [1, 2]\n"), "train"
    yield "an unknown key", write("unknown.yaml", b"train:\n  epoch: 2\n"), "train.epoch"
    yield "a tab indent", write("tab.yaml", b"train:\n\tepochs: 2\n"), "YAML"
    for kind, path in _special_files(root / "special", ".yaml").items():
        if kind != "broken link":  # the same as a missing file: checked below
            yield kind, path, str(path)


def test_params_files_that_are_not_params_are_one_line_errors(tmp_path, capsys):
    seen = 0
    for what, path, needle in _params_variants(tmp_path):
        message = one_line_error(lambda: load_params(path), needle, what=what)  # noqa: B023
        assert len(message) < 500, (what, len(message))
        seen += 1
    assert seen > 30
    cli_error(capsys, ["compare", "--params", str(tmp_path / "utf-16.yaml")], "UTF-8")
    cli_error(capsys, ["compare", "--params", str(tmp_path)], "not a regular file")
    cli_error(capsys, ["compare", "--params", str(tmp_path / "special" / "pipe.yaml")], "not a regular file")
    cli_error(capsys, ["compare", "--params", str(tmp_path / "special" / "broken.yaml")], "not found")


def test_a_params_file_with_a_bom_reads_like_one_without(tmp_path):
    (tmp_path / "bom.yaml").write_bytes("data:\n  num_ranks: 7\n".encode("utf-8-sig"))
    assert load_params(tmp_path / "bom.yaml").data.num_ranks == 7


# ------------------------------------------------------------------------------------------- tables

VALID_ROWS = 12


def _image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")


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
    _image(root.parent / "outside.png")
    return ["ok0.png\x00.png", "\x00", "../outside.png", "..\\outside.png", str(root.parent / "outside.png"),
            "folder", ".", "..", "missing.png", "x" * 5000 + ".png", "http://example.com/a.png",
            "~/a.png", "ok0.png/../../outside.png", "ok0.png\n"]


def _table_rows(root: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    valid = []
    for i in range(VALID_ROWS):
        _image(root / f"ok{i}.png", i)
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
    _image(root / "a.png")
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
            _image(root / str(label) / name, label * 10 + i)
    special = _special_files(root / "2", ".png")
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
    for kind, path in _special_files(root / "special", ".png").items():
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


# ------------------------------------------------------------------------ model, backbone, head files


@pytest.fixture(scope="module")
def saved(tiny_backbone, tmp_path_factory):
    """A coop model, its head and the tiny backbone saved as numclip saves them."""
    root = tmp_path_factory.mktemp("saved")
    model = build_model(load_params(None, [f"data.num_ranks={K}"]), "coop", tiny_backbone).eval()
    save_model(model, root / "model.safetensors")
    with torch.no_grad():
        save_prototypes(root / "head.safetensors", model.prototypes(), 10.0, model.card.head_metadata())
    save_backbone(tiny_backbone, root / "backbone.safetensors", "test")
    return root


def _metadata(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return load_file(str(path)), f.metadata()


def _json_shapes() -> typing.Iterator[tuple[str, str]]:
    """Metadata texts that are not the JSON object a card is."""
    yield "not JSON", "{model: 1"
    yield "empty", ""
    yield "a list", "[1, 2]"
    yield "a string", '"card"'
    yield "null", "null"
    yield "deep lists", "[" * 100_000 + "]" * 100_000
    yield "deep objects", '{"a":' * 100_000 + "1" + "}" * 100_000
    yield "65 levels", '{"a":' * 65 + "1" + "}" * 65


def _card_variants(card: dict) -> typing.Iterator[tuple[str, str]]:
    """Every top-level key missing or of a wrong type, and the card's parts made inconsistent."""
    yield from _json_shapes()
    required = ("numclip_version", "method", "method_config", "model", "num_ranks", "rank_words",
                "prompt_words", "zeroshot_template")
    for key in required:
        yield f"no {key}", json.dumps({k: v for k, v in card.items() if k != key})
    for key, bad in itertools.product(card, (True, [], {"x": []}, "x", 10**40, -1)):
        if key in ("run", "best_epoch", "concepts", "preprocess") and bad in ([], "x"):
            continue  # optional records; the wrong types below still cover them
        if isinstance(card[key], type(bad)) and not isinstance(bad, bool) or (key, bad) == ("best_epoch", 10**40) \
                or key == "run" and isinstance(bad, dict):
            continue  # the same type might be a valid value
        yield f"{key}={bad!r}", json.dumps({**card, key: bad})
    for key, bad in (("learner", "transformer"), ("learner", []), ("learner", None), ("n_ctx", -3),
                     ("n_ctx", "four")):
        yield f"method_config.{key}={bad!r}", json.dumps({**card, "method_config": {**card["method_config"], key: bad}})
    for key, bad in (("size", "big"), ("size", [0, 0]), ("size", 10**6), ("mean", [1]),
                     ("mean", [float("nan")] * 3), ("std", [0, 0, 0]),
                     ("interpolation", "zzz"), ("mode", "CMYK")):
        yield f"preprocess.{key}={bad!r}", json.dumps({**card, "preprocess": {**card["preprocess"], key: bad}})
    yield "one rank word too many", json.dumps({**card, "rank_words": card["rank_words"] + ["x"]})
    yield "one prompt word too few", json.dumps({**card, "prompt_words": card["prompt_words"][:-1]})
    yield "format from the future", json.dumps({**card, "format": 99})
    yield "another architecture", json.dumps({**card, "model": {"arch": "no-such-arch"}})
    yield "another width", json.dumps({**card, "model": {"arch": "RN50"}})


def test_model_files_with_a_damaged_card_are_one_line_errors(saved, tmp_path, capsys):
    state, meta = _metadata(saved / "model.safetensors")
    card = json.loads(meta["numclip"])
    count = 0
    for what, text in _card_variants(card):
        save_file(state, str(tmp_path / "m.safetensors"), metadata={"numclip": text})
        one_line_error(lambda: load_model(tmp_path / "m.safetensors"), "m.safetensors", what=what)
        count += 1
    assert count > 60
    cli_error(capsys, ["predict", "--model", str(tmp_path / "m.safetensors"), str(saved),
                       "--out", str(tmp_path / "p.csv")], "m.safetensors")


def _damaged_safetensors(good: Path, root: Path, special: bool = True) -> typing.Iterator[tuple[str, Path]]:
    """The file cut at offsets through its header and its data, and filled with noise."""
    data = good.read_bytes()
    header = struct.unpack("<Q", data[:8])[0]
    for cut in (0, 4, 8, 8 + header // 2, 8 + header, 8 + header + 10, len(data) - 1):
        (root / f"cut{cut}.safetensors").write_bytes(data[:cut])
        yield f"cut at {cut}", root / f"cut{cut}.safetensors"
    (root / "noise.safetensors").write_bytes(random.Random(1).randbytes(4096))
    yield "noise", root / "noise.safetensors"
    (root / "huge-header.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    yield "a header claiming a terabyte", root / "huge-header.safetensors"
    if special:
        yield from _special_files(root / "special", ".safetensors").items()


def test_damaged_or_special_model_head_and_backbone_files(saved, tmp_path):
    cfg = lambda path: ModelConfig(arch="numclip-tiny", pretrained=str(path))  # noqa: E731
    from numclip.models.head import load_prototypes

    for name, load in (("model", load_model), ("head", load_prototypes),
                       ("backbone", lambda p: create_backbone(cfg(p)))):
        folder = tmp_path / name
        folder.mkdir()
        for what, path in _damaged_safetensors(saved / f"{name}.safetensors", folder):
            one_line_error(lambda: load(path), str(path), what=f"{name}: {what}")  # noqa: B023


def test_backbone_records_of_every_shape(saved, tmp_path):
    state, meta = _metadata(saved / "backbone.safetensors")
    record = json.loads(meta["numclip_backbone"])
    variants = [*_json_shapes(), *[(f"preprocess={bad!r}", json.dumps({**record, "preprocess": bad}))
                                   for bad in ([], "x", 3, {"size": "big"}, {"std": [0, 0, 0]})]]
    config = ModelConfig(arch="numclip-tiny", pretrained=str(tmp_path / "b.safetensors"))
    for what, text in variants:
        save_file(state, config.pretrained, metadata={"numclip_backbone": text})
        one_line_error(lambda: create_backbone(config), "b.safetensors", what=what)


def test_head_files_that_do_not_fit_their_model(saved, tmp_path, capsys):
    from numclip.commands.predict import Predictor

    tensors, meta = _metadata(saved / "head.safetensors")
    prototypes = tensors["prototypes"]
    bad_tensors = {
        "another width": {**tensors, "prototypes": torch.randn(K, prototypes.shape[1] + 1)},
        "another count": {**tensors, "prototypes": torch.randn(K + 1, prototypes.shape[1])},
        "a vector": {**tensors, "prototypes": torch.randn(K)},
        "integers": {**tensors, "prototypes": torch.ones(K, prototypes.shape[1], dtype=torch.int64)},
        "NaN": {**tensors, "prototypes": torch.full_like(prototypes, float("nan"))},
        "infinite scale": {**tensors, "logit_scale": torch.tensor(float("inf"))},
        "two scales": {**tensors, "logit_scale": torch.ones(2)},
        "no prototypes": {"logit_scale": tensors["logit_scale"]},
    }
    head = tmp_path / "h.safetensors"
    for what, bad in bad_tensors.items():
        save_file(bad, str(head), metadata=meta)
        one_line_error(lambda: Predictor(saved / "model.safetensors", head), "h.safetensors", what=what)
    for what, text in _json_shapes():
        save_file(tensors, str(head), metadata={"numclip": text})
        one_line_error(lambda: Predictor(saved / "model.safetensors", head), "h.safetensors", what=what)
    save_file(bad_tensors["another width"], str(head), metadata=meta)
    cli_error(capsys, ["predict", "--model", str(saved / "model.safetensors"), str(saved), "--head", str(head),
                       "--out", str(tmp_path / "p.csv")], "h.safetensors", "model.safetensors", "width")


# ------------------------------------------------------------------------------------------ checkpoints


def _tiny_run(tmp_path: Path):
    """A Checkpoints of a real identity, and a small model with its optimizer and schedule."""
    params = load_params(None)
    for path in (params.data.manifest, params.pretrain.output):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"inputs")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return Checkpoints(params, "coop", "code"), model, optimizer, scheduler


def _checkpoint_variants(good: Path, root: Path) -> typing.Iterator[tuple[str, Path]]:
    """A good checkpoint with its state record cut, reshaped, missing keys or tensors, a weight of
    another shape under the same identity, and the file itself damaged."""
    tensors, meta = _metadata(good)
    state = meta["state"]

    def write(name: str, tensors: dict = tensors, **changes) -> Path:
        metadata = {k: v for k, v in {**meta, **changes}.items() if v is not None}
        save_file(tensors, str(root / name), metadata=metadata)
        return root / name
    for cut in (1, len(state) // 3, len(state) // 2, len(state) - 1):
        yield f"state cut at {cut}", write(f"cut{cut}.safetensors", state=state[:cut])
    for i, (what, text) in enumerate(_json_shapes()):
        yield f"state {what}", write(f"shape{i}.safetensors", state=text)
    yield "no state record", write("nostate.safetensors", state="")
    skeleton = json.loads(state)
    for key, _ in skeleton["__items__"]:
        items = [pair for pair in skeleton["__items__"] if pair[0] != key]
        yield f"no {key}", write(f"no-{key}.safetensors", state=json.dumps({"__items__": items}))
    positions = itertools.product(('"step", 5', '"epochs_done", 1'), ('"five"', "-1", "true", "null"))
    for i, (position, bad) in enumerate(positions):
        key = position.split(",")[0]
        assert position in state
        yield f"{key} {bad}", write(f"position{i}.safetensors", state=state.replace(position, f"{key}, {bad}"))
    yield "a reference to a missing tensor", write("dangling.safetensors", tensors=dict(list(tensors.items())[1:]))
    yield "a reference of another kind", write("kind.safetensors", state=state.replace('"__tensor__"', '"__tensr__"'))
    for name in [n for n in tensors if ".model." in n][:3]:
        yield f"{name} of another shape", write(f"wide{len(name)}.safetensors",
                                                tensors={**tensors, name: torch.zeros(*tensors[name].shape, 7)})
    (root / "damaged").mkdir()
    yield from _damaged_safetensors(good, root / "damaged", special=False)


def _dist():
    from numclip.training.distributed import Dist

    return Dist()


def test_damaged_checkpoints_are_refused_by_resume_and_set_aside_by_auto(tmp_path, monkeypatch):
    """Each damaged checkpoint is an UnusableCheckpoint (one line, saying how to go on) under
    `--resume`; `--resume auto` catches exactly that in numclip train, sets the folder aside and
    starts afresh (shown end to end in test_resume.py)."""
    monkeypatch.chdir(tmp_path)
    checkpoints, model, optimizer, scheduler = _tiny_run(tmp_path)
    checkpoints.save(TrainState(step=5, epochs_done=1), model, optimizer, scheduler, _dist())
    good = tmp_path / "good.safetensors"
    good.write_bytes(checkpoints.path.read_bytes())
    variants = tmp_path / "variants"
    variants.mkdir()
    count = 0
    for what, path in _checkpoint_variants(good, variants):
        checkpoints.path.write_bytes(path.read_bytes())
        fresh, model, optimizer, scheduler = _tiny_run(tmp_path)
        with deadline(), pytest.raises(UnusableCheckpoint) as caught:
            state = fresh.start("explicit", lambda _: None)
            fresh.restore(state, model, optimizer, scheduler)
        message = str(caught.value)
        assert "\n" not in message and "--resume auto" in message and "state.safetensors" in message, (what, message)
        count += 1
    assert count > 25
    checkpoints.path.write_bytes(good.read_bytes())  # the good one still resumes
    fresh, model, optimizer, scheduler = _tiny_run(tmp_path)
    state = fresh.start("explicit", lambda _: None)
    fresh.restore(state, model, optimizer, scheduler)
    assert state.step == 5


def test_moments_of_another_shape_are_unusable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoints, model, optimizer, scheduler = _tiny_run(tmp_path)
    checkpoints.save(TrainState(step=5), model, optimizer, scheduler, _dist())
    state = load_checkpoint(checkpoints.path)
    next(iter(state["optimizer"]["state"].values()))["exp_avg"] = torch.zeros(9)
    save_checkpoint(checkpoints.path, state)
    fresh, model, optimizer, scheduler = _tiny_run(tmp_path)
    with pytest.raises(UnusableCheckpoint, match="exp_avg has shape"):
        fresh.restore(fresh.start("explicit", lambda _: None), model, optimizer, scheduler)


# ----------------------------------------------------------------------------------- predict inputs


def test_predict_inputs_every_valid_image_predicted_every_bad_one_an_error_row(saved, tmp_path, capsys):
    """A folder and a list file full of hostile entries: the run ends (no pipe blocks it), every valid
    image gets a prediction, every bad entry an error row, and the CSV is UTF-8 whatever the names."""
    folder = tmp_path / "images"
    valid = [folder / f"ok{i}.png" for i in range(3)]
    for i, path in enumerate(valid):
        _image(path, i)
    odd = os.fsencode(folder) + b"/caf\xe9.png"  # a Latin-1 name: not UTF-8
    with open(odd, "wb") as f:
        f.write(valid[0].read_bytes())
    Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 256).save(folder / "deep16.png")
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    (folder / "cut.png").write_bytes(valid[1].read_bytes()[:60])
    special = _special_files(folder / "special", ".png")
    listed = tmp_path / "list.txt"
    listed.write_bytes(b"# a comment\n\n" + os.fsencode(valid[2]) + b"\n" + odd + b" 3\n"
                       + b"missing.png\n" + os.fsencode(folder / "special" / "pipe.png") + b"\n")
    out = tmp_path / "predictions.csv"
    with deadline(60):
        code = main(["predict", "--model", str(saved / "model.safetensors"), str(folder), str(listed),
                     "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    with open(out, newline="", encoding="utf-8") as f:  # strict UTF-8: undecodable bytes are escaped
        rows = list(csv.DictReader(f))
    predicted = {Path(r["path"]).name for r in rows if not r["error"]}
    failed = [Path(r["path"]).name for r in rows if r["error"]]
    assert predicted == {"ok0.png", "ok1.png", "ok2.png", "caf\\xe9.png", "deep16.png"}, rows
    bad_in_folder = {"zero.jpg", "text.png", "cut.png"} | {p.name for k, p in special.items() if k != "directory"}
    assert sorted(failed) == sorted([*bad_in_folder, "missing.png", "pipe.png"]), failed
    assert sum(1 for r in rows if not r["error"]) == 3 + 2 + 2  # the folder's five and the list's two
    assert all(r["error"] for r in rows if r["rank"] == "") and all(r["rank"] for r in rows if not r["error"])
