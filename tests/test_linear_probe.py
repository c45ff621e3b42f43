"""The language-free baseline (`learner: probe`): a trained linear or cosine head on the image encoder."""

import pytest
import torch
import torch.nn.functional as F

from numclip.config import load_params, method_config
from numclip.core.errors import NumclipError
from numclip.models.ordinal import LinearProbeModel, RankPromptModel, build_model
from numclip.training.objective import training_loss


def _model(tiny_backbone, probe: str):
    params = load_params(None)
    params.methods["probe"] = method_config(learner="probe", probe=probe)
    return params, build_model(params, "probe", tiny_backbone)


def test_linear_probe_is_w_f_plus_b(tiny_backbone):
    _, model = _model(tiny_backbone, "linear")
    assert isinstance(model, LinearProbeModel)
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        features = model.encode_image(images)
        expected = features @ model.prompts.weight.T + model.prompts.bias
        torch.testing.assert_close(model(images), expected)
    assert model.prompts.weight.shape == (10, model.embed_dim) and model.prompts.bias.shape == (10,)


def test_cosine_probe_is_scaled_cosine(tiny_backbone):
    _, model = _model(tiny_backbone, "cosine")
    assert type(model) is RankPromptModel and model.prompts.bias is None and model.head_bias() is None
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        f = F.normalize(model.encode_image(images), dim=-1)
        w = F.normalize(model.prompts.weight, dim=-1)
        torch.testing.assert_close(model(images), model.logit_scale() * f @ w.T, rtol=1e-5, atol=1e-5)


def test_probe_never_runs_the_text_tower(tiny_backbone):
    _, model = _model(tiny_backbone, "linear")
    calls = []
    hook = model.text.tower.transformer.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            model(torch.randn(2, 3, 64, 64))
            model.prototypes()
    finally:
        hook.remove()
    assert calls == []


def test_probe_trains_its_head_and_image_encoder_only(tiny_backbone):
    params, model = _model(tiny_backbone, "linear")
    groups = {g["name"]: g["params"] for g in model.parameter_groups(params.train.lr)}
    assert set(groups) == {"image_encoder", "head"}
    assert {id(p) for p in groups["head"]} == {id(model.prompts.weight), id(model.prompts.bias)}
    assert not model.clip.token_embedding.weight.requires_grad
    features, prototypes, logits = model.forward_parts(torch.randn(4, 3, 64, 64))
    loss, terms = training_loss(model, features, prototypes, logits, torch.tensor([0, 3, 9, 3]),
                                params.method("probe").loss)
    assert set(terms) == {"ce", "kl"}
    loss.backward()
    assert model.prompts.weight.grad.abs().sum() > 0 and model.prompts.bias.grad.abs().sum() > 0


def test_probe_initialisation_is_seeded(tiny_backbone):
    a, b = _model(tiny_backbone, "linear")[1], _model(tiny_backbone, "linear")[1]
    torch.testing.assert_close(a.prompts.weight, b.prompts.weight, rtol=0, atol=0)


@pytest.mark.parametrize("fields, key", [({"head": "concepts"}, "head"), ({"probe": "mlp"}, "probe"),
                                         ({"context_init": "a photo of"}, "context_init")])
def test_probe_params_refused(fields, key, tmp_path):
    path = tmp_path / "params.yaml"
    extra = ", ".join(f"{k}: {v}" for k, v in fields.items())
    path.write_text(f"methods:\n  p: {{learner: probe, {extra}}}\n")
    with pytest.raises(NumclipError, match=key):
        load_params(path)
