"""Hostile files numclip reads back (issue 16): model cards of every wrong shape, damaged model,
backbone and head files, damaged checkpoints, and predict inputs. Each ends as a one-line error or an
error row within the deadline, and every valid image is still predicted."""

from __future__ import annotations

import csv
import itertools
import json
import os
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile import (
    K,
    cli_error,
    damaged_safetensors,
    deadline,
    json_shapes,
    one_line_error,
    safetensors_contents,
    special_files,
    write_image,
)
from PIL import Image
from safetensors.torch import save_file

from numclip.cli import main
from numclip.config import ModelConfig, load_params
from numclip.models.backbone import create_backbone, save_backbone
from numclip.models.head import save_prototypes
from numclip.models.ordinal import build_model, load_model, save_model
from numclip.training.checkpoint import load_checkpoint, save_checkpoint
from numclip.training.resume import Checkpoints, TrainState, UnusableCheckpoint

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


def _card_variants(card: dict) -> typing.Iterator[tuple[str, str]]:
    """Every top-level key missing or of a wrong type, and the card's parts made inconsistent."""
    yield from json_shapes()
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
    state, meta = safetensors_contents(saved / "model.safetensors")
    card = json.loads(meta["numclip"])
    count = 0
    for what, text in _card_variants(card):
        save_file(state, str(tmp_path / "m.safetensors"), metadata={"numclip": text})
        one_line_error(lambda: load_model(tmp_path / "m.safetensors"), "m.safetensors", what=what)
        count += 1
    assert count > 60
    cli_error(capsys, ["predict", "--model", str(tmp_path / "m.safetensors"), str(saved),
                       "--out", str(tmp_path / "p.csv")], "m.safetensors")


def test_damaged_or_special_model_head_and_backbone_files(saved, tmp_path):
    cfg = lambda path: ModelConfig(arch="numclip-tiny", pretrained=str(path))  # noqa: E731
    from numclip.models.head import load_head

    for name, load in (("model", load_model), ("head", load_head),
                       ("backbone", lambda p: create_backbone(cfg(p)))):
        folder = tmp_path / name
        folder.mkdir()
        for what, path in damaged_safetensors(saved / f"{name}.safetensors", folder):
            one_line_error(lambda: load(path), str(path), what=f"{name}: {what}")  # noqa: B023


def test_backbone_records_of_every_shape(saved, tmp_path):
    state, meta = safetensors_contents(saved / "backbone.safetensors")
    record = json.loads(meta["numclip_backbone"])
    variants = [*json_shapes(), *[(f"preprocess={bad!r}", json.dumps({**record, "preprocess": bad}))
                                   for bad in ([], "x", 3, {"size": "big"}, {"std": [0, 0, 0]})]]
    config = ModelConfig(arch="numclip-tiny", pretrained=str(tmp_path / "b.safetensors"))
    for what, text in variants:
        save_file(state, config.pretrained, metadata={"numclip_backbone": text})
        one_line_error(lambda: create_backbone(config), "b.safetensors", what=what)


def test_head_files_that_do_not_fit_their_model(saved, tmp_path, capsys):
    from numclip.commands.predict import Predictor

    tensors, meta = safetensors_contents(saved / "head.safetensors")
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
        "a bias of another length": {**tensors, "bias": torch.zeros(K + 1)},
        "a NaN bias": {**tensors, "bias": torch.full((K,), float("nan"))},
    }
    head = tmp_path / "h.safetensors"
    for what, bad in bad_tensors.items():
        save_file(bad, str(head), metadata=meta)
        one_line_error(lambda: Predictor(saved / "model.safetensors", head), "h.safetensors", what=what)
    for what, text in json_shapes():
        save_file(tensors, str(head), metadata={"numclip": text})
        one_line_error(lambda: Predictor(saved / "model.safetensors", head), "h.safetensors", what=what)
    record = json.loads(meta["numclip"])
    for bad in ("x", [], None, {"alpha": 0.1}, {"threshold": "0.5"}, {"threshold": True}, {"threshold": float("inf")},
                3):
        save_file(tensors, str(head), metadata={"numclip": json.dumps({**record, "conformal": bad})})
        one_line_error(lambda: Predictor(saved / "model.safetensors", head), "h.safetensors", what=f"conformal={bad}")
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
    tensors, meta = safetensors_contents(good)
    state = meta["state"]

    def write(name: str, tensors: dict = tensors, **changes) -> Path:
        metadata = {k: v for k, v in {**meta, **changes}.items() if v is not None}
        save_file(tensors, str(root / name), metadata=metadata)
        return root / name
    for cut in (1, len(state) // 3, len(state) // 2, len(state) - 1):
        yield f"state cut at {cut}", write(f"cut{cut}.safetensors", state=state[:cut])
    for i, (what, text) in enumerate(json_shapes()):
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
    yield from damaged_safetensors(good, root / "damaged", special=False)


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
        write_image(path, i)
    odd = os.fsencode(folder) + b"/caf\xe9.png"  # a Latin-1 name: not UTF-8
    with open(odd, "wb") as f:
        f.write(valid[0].read_bytes())
    Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 256).save(folder / "deep16.png")
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    (folder / "cut.png").write_bytes(valid[1].read_bytes()[:60])
    special = special_files(folder / "special", ".png")
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
