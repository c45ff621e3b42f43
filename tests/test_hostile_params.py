"""Hostile params (issue 16): every integer and float key of the schema, found by walking it, with each
kind of wrong value, and params files that can never be params (encodings, alias bombs, nesting,
special files). Each ends as a one-line error within the deadline."""

from __future__ import annotations

import random
import typing
from pathlib import Path

import pytest
from hostile import (
    cli_error,
    one_line_error,
    special_files,
)

from numclip.config import Params, load_params

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
    for kind, path in special_files(root / "special", ".yaml").items():
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
