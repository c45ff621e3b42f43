"""CNN image encoders (torchvision VGG-16 and ResNet-50, numclip/models/cnn.py) in place of an open_clip
image tower, beside the architecture's text tower: shapes, torchvision weight files, the saved
backbone, the model card, and VGG-16 + numclip-tiny's text tower through ingest, pretrain,
prototypes, train, evaluate and predict.

VGG-16 has 138 M parameters (a 550 MB file), so images stay tiny (numclip-tiny's 64 px), the files
written are few, and the file checks that need no VGG use ResNet-50 (25 M, 100 MB).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torchvision
from hostile import one_line_error
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torchvision.transforms import Normalize

from numclip.cli import main
from numclip.config import ModelConfig, load_params
from numclip.models.backbone import backbone_config, create_backbone, save_backbone
from numclip.models.card import BackboneCard, ModelCard
from numclip.models.cnn import IMAGENET_MEAN, IMAGENET_STD, CNNTower, load_torchvision_state
from numclip.models.ordinal import build_model, load_model, read_model_card, save_model
from numclip.protocols.recipes import load_recipe

TINY = "numclip-tiny"  # the text tower: width 128; the image size kept: 64 px
WIDTH = {"vgg16": 4096, "resnet50": 2048}


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _cnn_features(name: str, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's own network, by hand: fc7 after its ReLU (VGG-16), the pooled feature (ResNet-50)."""
    if name == "vgg16":
        return net.classifier[:5](torch.flatten(net.avgpool(net.features(x)), 1))
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return torch.flatten(net.avgpool(net.layer4(net.layer3(net.layer2(net.layer1(x))))), 1)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """torchvision-layout files as others save them: a DataParallel `module.` prefix and the last
    classifier layer kept (DEX's 101 ages for VGG-16, ImageNet's 1000 classes for ResNet-50)."""
    root = tmp_path_factory.mktemp("weights")
    files = {}
    for name, suffix in (("vgg16", ".pt"), ("resnet50", ".safetensors")):
        torch.manual_seed(7)
        net = getattr(torchvision.models, name)(weights=None)
        if name == "vgg16":
            net.classifier[6] = nn.Linear(4096, 101)
        else:
            net.train()(_images(4))  # BatchNorm statistics that are not the initial 0 and 1
        net.eval()
        state = {f"module.{k}": v.contiguous() for k, v in net.state_dict().items()}
        path = root / f"{name}{suffix}"
        if suffix == ".pt":
            torch.save(state, path)
        else:
            save_file(state, str(path))
        files[name] = (path, net)
    yield files
    for path, _ in files.values():  # 650 MB that pytest's kept temporary folders need not hold
        path.unlink()


@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_the_cnn_tower_looks_like_an_open_clip_tower(name):
    torch.manual_seed(0)
    backbone = create_backbone(ModelConfig(arch=TINY, image_encoder=name))
    visual = backbone.model.visual
    assert isinstance(visual, CNNTower) and backbone.image_encoder == name
    assert visual.output_dim == 128 and visual.width == WIDTH[name], "projected to the text width"
    x = _images()
    with torch.no_grad():
        assert visual.eval().features(x).shape == (2, WIDTH[name])
        assert backbone.model.encode_image(x).shape == (2, 128), "CLIP.encode_image calls the CNN"
    cfg = backbone.preprocess_cfg
    assert (cfg["mean"], cfg["std"], cfg["size"], cfg["interpolation"]) == (IMAGENET_MEAN, IMAGENET_STD, 64, "bilinear")
    norm = [t for t in backbone.preprocess.transforms if isinstance(t, Normalize)][0]
    assert tuple(norm.mean) == IMAGENET_MEAN, "the transforms follow the CNN, not CLIP's mean and std"
    if name == "vgg16":  # fc6, ReLU, Dropout, fc7, ReLU: no 1000-way layer, no dropout after fc7
        assert [type(m) for m in visual.trunk.classifier] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU]


def test_the_projection_is_drawn_from_the_callers_rng():
    def projection(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return CNNTower("resnet50", 128).proj.weight
    assert torch.equal(projection(1), projection(1)) and not torch.equal(projection(1), projection(2))
    g = torch.Generator().manual_seed(5)
    assert projection(1).std().item() == pytest.approx(2048 ** -0.5, rel=0.05)
    assert not torch.equal(CNNTower("resnet50", 128, generator=g).proj.weight, projection(1))


@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_a_torchvision_weights_file_reproduces_torchvisions_features(weight_files, name):
    path, net = weight_files[name]
    backbone = create_backbone(ModelConfig(arch=TINY, image_encoder=name, image_weights=str(path)))
    x = _images(3, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(backbone.model.visual.eval().features(x), _cnn_features(name, net, x),
                                   rtol=0, atol=0)


def test_a_wrong_weights_file_is_a_one_line_error_naming_the_file_and_key(weight_files, tmp_path):
    resnet_path, resnet = weight_files["resnet50"]

    def build(name: str, path) -> None:
        create_backbone(ModelConfig(arch=TINY, image_encoder=name, image_weights=str(path)))

    one_line_error(lambda: build("vgg16", resnet_path), "model.image_weights", str(resnet_path),
                   "missing key 'features.0.weight'")
    state = dict(resnet.state_dict())
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    one_line_error(lambda: build("resnet50", tmp_path / "shape.pth"), str(tmp_path / "shape.pth"),
                   "'layer1.0.conv1.weight' has shape [64, 64, 3, 3]")
    state["layer1.0.conv1.weight"] = resnet.state_dict()["layer1.0.conv1.weight"]
    one_line_error(lambda: load_torchvision_state(CNNTower("resnet50", 128), {**state, "head.weight": torch.zeros(1)},
                                                  "x.pt"), "x.pt", "unexpected key 'head.weight'")
    one_line_error(lambda: build("resnet50", tmp_path / "missing.pt"), "model.image_weights", "not found")
    one_line_error(lambda: load_params(None, [f"model.image_weights={resnet_path}"]), "model.image_weights",
                   "only with model.image_encoder")
    one_line_error(lambda: load_params(None, ["model.image_encoder=vgg19"]), "model.image_encoder")


def test_a_saved_backbone_reloads_identically(weight_files, tmp_path):
    path, _ = weight_files["resnet50"]
    torch.manual_seed(0)
    backbone = create_backbone(ModelConfig(arch=TINY, image_encoder="resnet50", image_weights=str(path)))
    save_backbone(backbone, tmp_path / "backbone.safetensors", "test")
    with safe_open(str(tmp_path / "backbone.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["numclip_backbone"])["image_encoder"] == "resnet50"
    params = load_params(None, ["model.image_encoder=resnet50", f"model.image_weights={path}",
                                f"pretrain.output={tmp_path / 'backbone.safetensors'}"])
    cfg = backbone_config(params)
    assert (cfg.image_encoder, cfg.image_weights) == ("resnet50", None), "the file holds the CNN's weights"
    torch.manual_seed(1)  # another projection drawn: the file's must replace it
    again = create_backbone(cfg)
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(again.model.eval().encode_image(x), backbone.model.eval().encode_image(x),
                                   rtol=0, atol=0)
    assert again.preprocess_cfg == backbone.preprocess_cfg and again.image_encoder == "resnet50"
    file = str(tmp_path / "backbone.safetensors")
    one_line_error(lambda: create_backbone(ModelConfig(arch=TINY, pretrained=file)),
                   file, "resnet50 image encoder", "model.image_encoder is null")
    one_line_error(lambda: create_backbone(ModelConfig(arch=TINY, pretrained=file, image_encoder="resnet50",
                                                       image_weights=str(path))),
                   "model.image_weights", "already holds")


def test_a_clip_file_keeps_its_text_tower_and_the_cnn_replaces_its_image_tower(tiny_backbone, tmp_path):
    state = {k: v.contiguous() for k, v in tiny_backbone.model.state_dict().items()}
    save_file(state, str(tmp_path / "clip.safetensors"))
    backbone = create_backbone(ModelConfig(arch=TINY, pretrained=str(tmp_path / "clip.safetensors"),
                                           image_encoder="resnet50"))
    tokens = tiny_backbone.tokenizer(["a photo of three objects."])
    with torch.no_grad():
        torch.testing.assert_close(backbone.model.eval().encode_text(tokens),
                                   tiny_backbone.model.eval().encode_text(tokens), rtol=0, atol=0)
    assert isinstance(backbone.model.visual, CNNTower)
    del state["token_embedding.weight"]
    save_file(state, str(tmp_path / "short.safetensors"))
    one_line_error(lambda: create_backbone(ModelConfig(arch=TINY, pretrained=str(tmp_path / "short.safetensors"),
                                                       image_encoder="resnet50")),
                   "does not match the architecture", "token_embedding.weight")


def test_the_model_card_records_and_rebuilds_the_image_encoder(tmp_path):
    torch.manual_seed(0)
    backbone = create_backbone(ModelConfig(arch=TINY, image_encoder="resnet50"))
    model = build_model(load_params(None, ["model.image_encoder=resnet50"]), "coop", backbone).eval()
    save_model(model, tmp_path / "coop.safetensors")
    card = read_model_card(tmp_path / "coop.safetensors")
    assert card.model.image_encoder == "resnet50" and card.preprocess_cfg()["mean"] == IMAGENET_MEAN
    loaded = load_model(tmp_path / "coop.safetensors")
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    norm = [t for t in loaded.preprocess.transforms if isinstance(t, Normalize)][0]
    assert isinstance(loaded.clip.visual, CNNTower) and tuple(norm.std) == IMAGENET_STD
    assert BackboneCard.model_validate({"arch": TINY, "pretrained": None}).image_encoder is None, "old cards load"
    damaged = json.loads(card.to_json())
    damaged["model"]["image_encoder"] = "vgg19"
    one_line_error(lambda: ModelCard.from_json(json.dumps(damaged), "m.safetensors"),
                   "m.safetensors", "model.image_encoder")


def test_the_morph_vgg_recipe_loads():
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "morph_vgg.yaml")
    params = load_params(None, [f"{k}={json.dumps(v)}" for k, v in recipe.params.items()])
    assert (params.model.arch, params.model.image_encoder) == ("RN50", "vgg16")
    assert recipe.published()["ordinalclip"] == {"mae_argmax": 2.32}
    assert "zeroshot" not in recipe.methods, "a random projection has no zero-shot prior"


END_TO_END = ["data.num_ranks=4", "data.synthetic.num_images=24", "data.synthetic.image_size=32",
              "methods={coop: {learner: plain}}", "model.image_encoder=vgg16", "model.device=cpu",
              "pretrain.epochs=0", "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4",
              "evaluate.batch_size=16", "task.concepts.edges=[0, 1, 2]",
              "task.concepts.names=[a single, a couple of, a few]"]


def test_vgg16_with_a_clip_text_tower_trains_evaluates_and_predicts(tmp_path, monkeypatch):
    """Random VGG-16 weights and numclip-tiny's text tower through every stage `coop` needs."""
    monkeypatch.chdir(tmp_path)
    sets = [a for o in END_TO_END for a in ("--set", o)]
    for command in ("ingest", "pretrain", "prototypes", "train", "evaluate"):
        assert main([command, *sets]) == 0, command
    card = read_model_card("models/coop.safetensors")
    assert card.model.image_encoder == "vgg16" and card.preprocess_cfg()["mean"] == IMAGENET_MEAN
    with safe_open("models/backbone.safetensors", "pt") as before, safe_open("models/coop.safetensors", "pt") as after:
        for key in ("visual.trunk.classifier.3.weight", "visual.proj.weight"):
            assert not torch.equal(before.get_tensor(key), after.get_tensor(f"clip.{key}")), f"{key} trains"
    metrics = json.loads((tmp_path / "metrics" / "eval" / "coop.json").read_text())
    assert metrics["test"]["n"] > 0 and 0 <= metrics["test"]["accuracy"] <= 1

    for out, head in (("full.csv", []), ("head.csv", ["--head", "artifacts/heads/coop.safetensors"])):
        assert main(["predict", "data/synthetic", "--model", "models/coop.safetensors", *head, "--out", out,
                     *sets]) == 0
    full, head = (list(csv.DictReader(open(name))) for name in ("full.csv", "head.csv"))
    assert len(full) == 24 and not any(r["error"] for r in full)
    assert [r["rank"] for r in full] == [r["rank"] for r in head], "the exported head needs no text tower"
    for a, b in zip(full, head):
        assert float(a["p_0"]) == pytest.approx(float(b["p_0"]), abs=1e-4)
    for big in (tmp_path / "models").glob("*.safetensors"):  # 570 MB each
        big.unlink()
