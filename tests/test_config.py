"""Params: defaults, overrides, and errors that name the key."""

import pytest

from numclip.config import load_params, parse_override
from numclip.core.errors import NumclipError


def test_defaults_and_repo_params_agree():
    assert load_params(None) == load_params("params.yaml"), "params.yaml restates the library defaults"


def test_overrides_are_yaml_typed():
    p = load_params(None, ["train.epochs=3", "methods.ordinalclip.interpolation=inv_prop",
                           "task.rank_words=[a, b, c]", "data.num_ranks=3"])
    assert p.train.epochs == 3 and p.methods["ordinalclip"].interpolation == "inv_prop"
    assert p.rank_words() == ["a", "b", "c"]
    assert parse_override("model.pretrained=") == (["model", "pretrained"], None)


@pytest.mark.parametrize("override, key", [
    ("train.epochs=many", "train.epochs"),
    ("train.epoch=3", "train.epoch"),
    ("data.split.train=0.9", "data.split"),
    ("methods.coop.learner=magic", "methods.coop.learner"),
    ("train.lr.context=-1", "train.lr.context"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(NumclipError) as err:
        load_params(None, [override])
    assert key in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(NumclipError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(NumclipError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(NumclipError, match="must look like"):
        load_params(None, ["train.epochs"])


def test_rank_words_must_match_k(tmp_path):
    with pytest.raises(NumclipError, match="has 2 words but data.num_ranks is 10"):
        load_params(None, ["task.rank_words=[a, b]"]).rank_words()
    f = tmp_path / "w.txt"
    f.write_text("x\ny\n")
    with pytest.raises(NumclipError, match=r"w.txt\) has 2 words"):
        load_params(None, [f"task.rank_words_file={f}"]).rank_words()
    with pytest.raises(NumclipError, match="unknown method 'nope'"):
        load_params(None).method("nope")


def test_atomic_write_leaves_ordinary_permissions_and_no_temporaries(tmp_path):
    import os
    import stat

    from numclip.core.atomic import atomic_path, write_json

    write_json(tmp_path / "a" / "m.json", {"x": 1})
    mode = stat.S_IMODE(os.stat(tmp_path / "a" / "m.json").st_mode)
    assert mode & stat.S_IRGRP, "files are readable by others like any ordinary file"
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a" / "m.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert (tmp_path / "a" / "m.json").read_text().startswith("{"), "a failed write keeps the old file"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["m.json"]
