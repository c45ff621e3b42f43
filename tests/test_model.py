"""Cosine head, parameter groups, save -> load round trips and safe weight loading."""

import pytest
import torch
from safetensors.torch import save_file

from numclip.config import ModelConfig, load_params
from numclip.core.errors import NumclipError
from numclip.models.backbone import create_backbone, load_weights_file
from numclip.models.head import cosine_logits, head_logits, load_head, save_prototypes
from numclip.models.ordinal import build_model, load_model, save_model


def test_cosine_logits_hand_computed():
    f = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    logits = cosine_logits(f, t, 10.0)
    torch.testing.assert_close(logits, torch.tensor([[6.0, 8.0], [0.0, 10.0]]))
    with pytest.raises(ValueError):
        cosine_logits(f, torch.ones(3, 4), 1.0)
    with pytest.raises(ValueError, match="impl"):
        cosine_logits(f, t, 1.0, impl="cuda-magic")


def test_cosine_logits_compile_matches_eager():
    g = torch.Generator().manual_seed(0)
    f, t = torch.randn(8, 16, generator=g), torch.randn(5, 16, generator=g)
    torch.testing.assert_close(cosine_logits(f, t, 14.3, impl="compile"), cosine_logits(f, t, 14.3, impl="torch"))


def test_preprocessing_uses_the_model_mean_and_std(tiny_backbone):
    from torchvision.transforms import Normalize

    norm = [t for t in tiny_backbone.preprocess.transforms if isinstance(t, Normalize)][0]
    assert tuple(norm.mean) == tuple(tiny_backbone.model.visual.image_mean)
    custom = create_backbone(ModelConfig(arch="numclip-tiny"),
                             preprocess_cfg={"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)})
    norm = [t for t in custom.preprocess.transforms if isinstance(t, Normalize)][0]
    assert tuple(norm.mean) == (0.5, 0.5, 0.5) and custom.preprocess_cfg["std"] == (0.25, 0.25, 0.25)


def test_parameter_groups_freeze_text_encoder(tiny_backbone):
    params = load_params(None)
    model = build_model(params, "coop", tiny_backbone)
    groups = {g["name"]: g for g in model.parameter_groups(params.train.lr)}
    assert set(groups) == {"context", "rank", "image_encoder"}
    assert not model.clip.token_embedding.weight.requires_grad
    assert not model.clip.logit_scale.requires_grad
    assert groups["image_encoder"]["lr"] == params.train.lr.image_encoder


@pytest.mark.parametrize("method", ["zeroshot", "coop", "ordinalclip", "linear_probe"])
def test_save_load_and_prototype_only_inference(tiny_backbone, tmp_path, method):
    params = load_params(None)
    model = build_model(params, method, tiny_backbone).eval()
    with torch.no_grad():  # make the learned parts differ from their initialisation
        for p in model.prompts.parameters():
            p.add_(0.01 * torch.randn_like(p))
    images = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        full = model(images)
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), full, rtol=0, atol=0)
        save_prototypes(tmp_path / "head.safetensors", model.prototypes(), float(model.logit_scale()), {"m": method},
                        bias=model.head_bias())
    head = load_head(tmp_path / "head.safetensors")
    assert head.metadata == {"m": method} and head.prototypes.shape == (10, 128)
    assert (head.bias is None) == (model.head_bias() is None)
    with torch.no_grad():
        head_only = head_logits(loaded.encode_image(images), head.prototypes, head.scale, head.bias)
    torch.testing.assert_close(head_only, full, rtol=1e-5, atol=1e-5)


def test_local_weights_file_roundtrip(tiny_backbone, tmp_path):
    state = {k: v.contiguous() for k, v in tiny_backbone.model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pt")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = tiny_backbone.model.eval().encode_image(x)
        for name in ("w.safetensors", "w.pt"):
            bb = create_backbone(ModelConfig(arch="numclip-tiny", pretrained=str(tmp_path / name)))
            torch.testing.assert_close(bb.model.eval().encode_image(x), ref)


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned_by_numclip_test",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({"weight": torch.zeros(1), "payload": _Exploit()}, f)
    with pytest.raises(NumclipError, match="refused to load"):
        load_weights_file(path)
    assert not (tmp_path / "pwned_by_numclip_test").exists()


def test_bad_weights_and_arch(tmp_path):
    with pytest.raises(NumclipError, match="unknown open_clip architecture"):
        create_backbone(ModelConfig(arch="ViT-Nope"))
    with pytest.raises(NumclipError, match="not found"):
        create_backbone(ModelConfig(arch="numclip-tiny", pretrained=str(tmp_path / "missing.safetensors")))
    save_file({"visual.wrong": torch.zeros(2)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(NumclipError, match="does not match the architecture"):
        create_backbone(ModelConfig(arch="numclip-tiny", pretrained=str(tmp_path / "wrong.safetensors")))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(NumclipError, match="not a readable safetensors"):
        load_weights_file(tmp_path / "junk.safetensors")
