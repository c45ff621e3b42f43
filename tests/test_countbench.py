"""CountBench-style counting: reading a CountBench copy, the argmax-over-nine-captions read-out (checked
exactly with a fake model), the synthetic items, and the counting stage end to end on tiny backbones."""

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from numclip.config import ModelConfig, load_params
from numclip.config.paths import model_path, plain_twin
from numclip.core.errors import NumclipError
from numclip.counting.captions import find_count
from numclip.counting.countbench import (
    CountItem,
    evaluate_counting,
    read_countbench,
    synthetic_items,
)
from numclip.data import Manifest, ManifestRow, ingest, read_manifest
from numclip.models.backbone import Backbone, create_backbone, save_backbone
from numclip.models.ordinal import build_model, save_model
from numclip.stages.counting import run_counting


def _png(path, value=128, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, 255 - value, 60)).save(path)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_backbone(ModelConfig(arch="numclip-tiny"), torch.device("cpu"))


# ------------------------------------------------------------------------------------- read_countbench
ENTRIES = [
    {"image_url": "https://a.example/x/0.jpg", "text": "two dogs on a sofa", "number": 2},
    {"image_url": "https://b.example/img/cats%20photo.png?size=large", "text": "Three cats.", "number": 3},
    {"image_url": "https://c.example/missing.jpg", "text": "four apples", "number": 4},
    {"image_url": "https://d.example/p.jpg", "text": "a bunch of bananas", "number": 5},
    {"image_url": "https://e.example/q.jpg", "text": "five birds on a wire", "number": 6},  # number wins
    {"image_url": "https://f.example/r.jpg", "text": "eleven players", "number": 11},
    {"image_url": "https://g.example/s.jpg", "text": "seven stars", "number": 7},
]


def _countbench(tmp_path, entries=ENTRIES):
    json_path = tmp_path / "CountBench.json"
    json_path.write_text(json.dumps(entries))
    images = tmp_path / "countbench_images"
    _png(images / "0.jpg", 10)               # by index
    _png(images / "cats photo.png", 30)      # by the URL's basename (decoded, query dropped)
    _png(images / "0003.png", 50)            # zero-padded index
    _png(images / "4.webp", 70)
    _png(images / "5.jpeg", 90)
    (images / "6.jpg").write_bytes(b"not an image at all")
    (images / "notes.txt").write_text("downloaded with wget")
    return json_path, images


def test_read_countbench_items_and_reported_rejects(tmp_path):
    json_path, images = _countbench(tmp_path)
    items, rejects = read_countbench(json_path, images)
    assert [(i.image.name, i.count, i.source) for i in items] == [
        ("0.jpg", 2, "CountBench.json[0]"), ("cats photo.png", 3, "CountBench.json[1]"),
        ("4.webp", 6, "CountBench.json[4]")]
    assert items[2].caption == "five birds on a wire", "the text is kept; number is the ground truth"
    reasons = {r["index"]: r["reason"] for r in rejects}
    assert sorted(reasons) == [2, 3, 5, 6]
    assert reasons[2].startswith("image not found") and "missing.jpg" in reasons[2]
    assert reasons[3].startswith("text names no single count")
    assert reasons[5] == "number 11 outside 2..10"
    assert reasons[6].startswith("unreadable image")
    assert rejects[0]["image_url"] == "https://c.example/missing.jpg"
    # without the decode check the broken file counts as found (evaluation would then fail on it)
    items, rejects = read_countbench(json_path, images, check_images=False)
    assert [i.source for i in items][-1] == "CountBench.json[6]"


def test_read_countbench_basename_shared_by_two_entries_is_not_used(tmp_path):
    entries = [{"image_url": "https://a.example/image.jpg", "text": "two cups", "number": 2},
               {"image_url": "https://b.example/image.jpg", "text": "three cups", "number": 3}]
    json_path, images = _countbench(tmp_path, entries)
    (images / "0.jpg").unlink()
    _png(images / "image.jpg")
    items, rejects = read_countbench(json_path, images)
    assert items == [] and [r["index"] for r in rejects] == [0, 1]


@pytest.mark.parametrize("content, match", [
    ("[{\"image_url\": 1,", r"CountBench.json is not valid JSON"),
    ("{\"image_url\": \"u\"}", r"CountBench.json must hold a JSON list"),
    (json.dumps([ENTRIES[0], {"image_url": "u", "text": "two"}]),
     r"CountBench.json entry \[1\] lacks field\(s\) number"),
    (json.dumps([ENTRIES[0], ENTRIES[1], "x"]), r"CountBench.json entry \[2\] is a str"),
    (json.dumps([dict(ENTRIES[0], number="2")]), r"entry \[0\]: number must be an integer"),
])
def test_read_countbench_malformed_file_names_file_and_index(tmp_path, content, match):
    (tmp_path / "CountBench.json").write_text(content)
    (tmp_path / "img").mkdir()
    with pytest.raises(NumclipError, match=match):
        read_countbench(tmp_path / "CountBench.json", tmp_path / "img")


def test_read_countbench_missing_paths(tmp_path):
    json_path, images = _countbench(tmp_path)
    with pytest.raises(NumclipError, match="CountBench file not found"):
        read_countbench(tmp_path / "nope.json", images)
    with pytest.raises(NumclipError, match="images folder not found"):
        read_countbench(json_path, tmp_path / "nope")


# ----------------------------------------------------------------------------------- evaluate_counting
def _items(tmp_path, counts, caption="a photo of {} red circles"):
    words = ["", "", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    items = []
    for i, c in enumerate(counts):
        path = tmp_path / "img" / f"{i}.png"
        _png(path, value=20 * c)  # the red channel encodes the true count, for the fake model
        items.append(CountItem(image=path, caption=caption.format(words[c]), count=c, source=f"item {i}"))
    return items


def test_evaluate_counting_with_tiny_backbone(tmp_path, tiny):
    counts = [2, 3, 3, 5, 7, 10, 10]
    tiny.model.train()
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    out = evaluate_counting(tiny, _items(tmp_path, counts), "cpu", batch_size=3)
    assert out["n"] == len(counts) and 0 <= out["accuracy"] <= 1 and out["chance_accuracy"] == pytest.approx(1 / 9)
    confusion = torch.tensor(out["confusion"])
    assert confusion.shape == (9, 9) and int(confusion.sum()) == len(counts)
    assert confusion.sum(dim=1).tolist() == [1, 2, 0, 1, 0, 1, 0, 0, 2]
    assert out["per_count_accuracy"][4] is None and set(out["per_count_accuracy"]) == set(range(2, 11))
    assert [p[1] for p in out["predictions"]] == counts
    assert all(2 <= p[2] <= 10 for p in out["predictions"])
    assert out["mad"] == pytest.approx(sum(abs(t - p) for _, t, p in out["predictions"]) / len(counts))
    assert tiny.model.training, "the caller's mode is restored"
    after = tiny.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items()), "eval mode: batch-norm stats untouched"


class _FakeClip(nn.Module):
    """Text embedding = one-hot of the caption's count; image embedding = one-hot of (encoded count + shift)."""

    def __init__(self, shift: int):
        super().__init__()
        self.shift = shift

    def encode_text(self, tokens):
        return F.one_hot(tokens, 16).float() * 3.0  # unnormalised on purpose

    def encode_image(self, images):
        return F.one_hot(images[:, 0] + self.shift, 16).float() * 0.5 + 0.01


def _fake_backbone(shift: int) -> Backbone:
    return Backbone(model=_FakeClip(shift), arch="fake", pretrained=None,
                    tokenizer=lambda captions: torch.tensor([find_count(c).count for c in captions]),
                    preprocess=lambda image: torch.tensor([image.getpixel((0, 0))[0] // 20]))


def test_evaluate_counting_is_exact_when_image_matches_true_caption(tmp_path):
    counts = [2, 3, 4, 5, 6, 7, 8, 9, 10, 4, 4]
    out = evaluate_counting(_fake_backbone(0), _items(tmp_path, counts), "cpu", batch_size=4)
    assert out["accuracy"] == 1.0 and out["mad"] == 0.0
    assert out["confusion"][2][2] == 3 and all(v == 1.0 for v in out["per_count_accuracy"].values())


def test_evaluate_counting_off_by_one(tmp_path):
    counts = [2, 3, 5, 9, 9]
    out = evaluate_counting(_fake_backbone(1), _items(tmp_path, counts, "{} dogs"), "cpu", batch_size=2)
    assert out["accuracy"] == 0.0 and out["mad"] == 1.0
    assert [p[2] for p in out["predictions"]] == [3, 4, 6, 10, 10]
    assert out["confusion"][7][8] == 2 and out["per_count_accuracy"][9] == 0.0


def test_evaluate_counting_rejects_empty_and_non_counting(tmp_path):
    with pytest.raises(NumclipError, match="no counting items"):
        evaluate_counting(_fake_backbone(0), [], "cpu", batch_size=2)
    bad = [CountItem(image=tmp_path / "x.png", caption="a dog", count=2, source="row 9")]
    with pytest.raises(NumclipError, match="row 9: caption 'a dog'"):
        evaluate_counting(_fake_backbone(0), bad, "cpu", batch_size=2)


# ------------------------------------------------------------------------------------ synthetic_items
def test_synthetic_items_keep_counting_captions_of_the_split(tmp_path):
    rows = [ManifestRow("a.png", 3, "test", "a photo of four red circles", source_row="r0"),
            ManifestRow("b.png", 0, "test", "a photo of one red circle", source_row="r1"),
            ManifestRow("c.png", 1, "test", None, source_row="r2"),
            ManifestRow("d.png", 1, "train", "a photo of two blue squares", source_row="r3"),
            ManifestRow("e.png", 4, "test", "two cats and three dogs", source_row="r4"),
            ManifestRow("f.png", 1, "test", "Two green triangles", source_row="r5")]
    manifest = Manifest(rows=rows, images_root=tmp_path, num_ranks=10)
    items = synthetic_items(manifest, "test")
    assert [(i.image, i.count) for i in items] == [(tmp_path / "a.png", 4), (tmp_path / "f.png", 2)]
    assert items[0].source == "manifest test row 0 (a.png)" and items[1].source == "manifest test row 4 (f.png)"
    assert synthetic_items(manifest, "val") == []


# ---------------------------------------------------------------------------------------- the stage
def _stage_params(tmp_path, *extra):
    out = tmp_path / "run"
    return load_params(None, [
        "data.num_ranks=4", "data.synthetic.num_images=40", "data.synthetic.image_size=16",
        f"data.synthetic.output_dir={out / 'synthetic'}", f"data.manifest={out / 'manifest.parquet'}",
        f"data.rejects={out / 'rejects.csv'}", f"data.incoming={out / 'none'}", "model.device=cpu",
        "methods={zeroshot: {learner: fixed}, coop: {learner: plain}}",
        f"pretrain.output={out / 'backbone.safetensors'}", f"pretrain.metrics={out / 'pretrain.json'}",
        f"plain_backbone.root={out / 'plain'}", f"train.models_dir={out / 'models'}",
        f"counting.metrics={out / 'metrics' / 'counting.json'}", f"counting.table={out / 'metrics' / 'counting.md'}",
        f"counting.output_dir={out / 'figures'}",
        "counting.batch_size=16", *extra])


@pytest.fixture
def stage_params(tmp_path):
    """Tiny synthetic data, two random-init backbones, pretrain metrics of the count-aware one only, and
    every method trained on the count-aware backbone but only zeroshot on the plain one."""
    params = _stage_params(tmp_path)
    ingest(params.data)
    plain = plain_twin(params)
    for seed, p in ((0, params), (1, plain)):
        torch.manual_seed(seed)
        backbone = create_backbone(ModelConfig(arch="numclip-tiny"), "cpu")
        save_backbone(backbone, p.pretrain.output, source=f"random init {seed}")
        for method in (params.methods if p is params else ["zeroshot"]):
            save_model(build_model(p, method, backbone), model_path(p, method))
    zero_shot = {"accuracy": 0.5, "mae_argmax": 0.75, "mae_expectation": 0.8, "off_by_one": 0.9}
    (tmp_path / "run" / "pretrain.json").write_text(json.dumps({"zero_shot_test": zero_shot}))
    return params


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_counting_writes_both_columns(stage_params, tmp_path):
    logged = []
    result = run_counting(stage_params, log=logged.append)
    out = tmp_path / "run" / "metrics"
    saved = json.loads((out / "counting.json").read_text())
    assert set(saved) == {"count_aware", "plain"} and set(result) == set(saved)
    aware, plain = saved["count_aware"], saved["plain"]
    assert aware["synthetic"]["n"] == plain["synthetic"]["n"] > 0
    assert "predictions" not in aware["synthetic"] and aware["countbench"] is None
    assert aware["zero_shot_rank"] == {"accuracy": 0.5, "mae_argmax": 0.75} and plain["zero_shot_rank"] is None
    assert set(aware["methods"]) == {"zeroshot", "coop"} and aware["methods"]["coop"]["mae_argmax"] >= 0
    assert plain["methods"]["coop"] is None and plain["methods"]["zeroshot"]["accuracy"] >= 0
    markdown = (out / "counting.md").read_text()
    assert markdown.splitlines()[0] == "| | count-aware | plain CLIP loss |"
    assert "| zero-shot rank accuracy (template prompts) | 0.500 | n/a |" in markdown
    coop = [line for line in markdown.splitlines() if line.startswith("| coop test MAE")][0]
    assert coop.endswith("| n/a |") and "CountBench" not in markdown
    assert logged[-1] == markdown.rstrip("\n")
    predictions = _read_csv(tmp_path / "run" / "figures" / "predictions.csv")
    assert {r["backbone"] for r in predictions} == {"count_aware", "plain"}
    assert {r["dataset"] for r in predictions} == {"synthetic"}
    assert all(2 <= int(r["predicted"]) <= 10 and 2 <= int(r["true"]) <= 4 for r in predictions)
    assert _read_csv(tmp_path / "run" / "figures" / "countbench_missing.csv") == []
    figures = sorted(p.name for p in (tmp_path / "run" / "figures").glob("*.png"))
    assert figures == ["count_aware_synthetic.png", "plain_synthetic.png"]


def test_run_counting_with_countbench(stage_params, tmp_path):
    json_path, images = _countbench(tmp_path)
    params = stage_params.model_copy(deep=True)
    params.counting.countbench_json, params.counting.countbench_images = str(json_path), str(images)
    result = run_counting(params, log=lambda s: None)
    out = tmp_path / "run" / "metrics"
    for name in ("count_aware", "plain"):
        assert result[name]["countbench"]["n"] == 3 and result[name]["countbench"]["n_missing"] == 4
    markdown = (out / "counting.md").read_text()
    assert "| CountBench accuracy (n = 3, 4 missing or rejected) |" in markdown
    missing = _read_csv(tmp_path / "run" / "figures" / "countbench_missing.csv")
    assert [int(r["index"]) for r in missing] == [2, 3, 5, 6] and missing[0]["reason"].startswith("image not found")
    datasets = {(r["backbone"], r["dataset"]) for r in _read_csv(tmp_path / "run" / "figures" / "predictions.csv")}
    assert ("plain", "countbench") in datasets and ("count_aware", "synthetic") in datasets
    assert (tmp_path / "run" / "figures" / "plain_countbench.png").is_file()


def test_run_counting_countbench_needs_images_and_plain_backbone(stage_params):
    params = stage_params.model_copy(deep=True)
    params.counting.countbench_json = "CountBench.json"
    with pytest.raises(NumclipError, match="countbench_images is not"):
        run_counting(params, log=lambda s: None)
    params = stage_params.model_copy(deep=True)
    params.plain_backbone.root = "nowhere"
    with pytest.raises(NumclipError, match="pretrain.output under plain_backbone.root"):
        run_counting(params, log=lambda s: None)
    params = stage_params.model_copy(deep=True)
    params.pretrain.output = "nowhere/backbone.safetensors"
    with pytest.raises(NumclipError, match=r"\(pretrain.output\): run `numclip pretrain`"):
        run_counting(params, log=lambda s: None)


def test_word_choices_keep_the_plural_and_need_exactly_one_word():
    from numclip.counting.attributes import word_choices
    options, truth = word_choices("a photo of four red circles", ["circle", "square", "triangle"])
    assert options == ["a photo of four red circles", "a photo of four red squares",
                       "a photo of four red triangles"] and truth == 0
    assert word_choices("a photo of one blue square", ["red", "blue"]) == (
        ["a photo of one red square", "a photo of one blue square"], 1)
    assert word_choices("a red and blue square", ["red", "blue"]) is None
    assert word_choices("a photo of objects", ["red", "blue"]) is None
    assert word_choices("a reddish square", ["red", "blue"]) is None


def test_run_counting_reports_colour_and_shape_choice(stage_params):
    result = run_counting(stage_params, log=lambda s: None)
    for backbone in ("count_aware", "plain"):
        attributes = result[backbone]["attributes"]
        assert set(attributes) == {"colour", "shape"}
        assert attributes["shape"]["chance_accuracy"] == pytest.approx(1 / 3)
        assert attributes["colour"]["n"] == result[backbone]["synthetic"]["n"] + sum(
            1 for r in read_manifest(stage_params.data.manifest).split("test") if r.label == 0)
    markdown = open(stage_params.counting.table).read()
    assert "zero-shot colour accuracy" in markdown and "zero-shot shape accuracy" in markdown
