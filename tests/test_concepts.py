"""NumCLIP's concept bins, image adapter, SSR regressor, and the concept model end to end."""

import pytest
import torch

from numclip.config import load_params
from numclip.core.errors import NumclipError
from numclip.models.concepts import ConceptBins, ImageAdapter, SSRRegressor
from numclip.models.ordinal import ConceptModel, build_model, load_model, save_model
from numclip.training.objective import head_outputs, training_loss


def test_counting_preset_maps_every_rank_to_exactly_one_bin():
    bins = ConceptBins.create("counting", None, None, 10, [])
    coarse = bins.coarse(torch.arange(10))
    assert coarse.tolist() == [0, 1, 2, 2, 3, 3, 3, 4, 4, 4]  # counts {1} {2} {3,4} {5,6,7} {8,9,10}
    assert set(coarse.tolist()) == set(range(bins.num_bins)), "no empty bin"
    assert bins.centres().tolist() == [0.0, 1.0, 2.5, 5.0, 8.0]


def test_age_preset_with_the_released_label_shift():
    bins = ConceptBins.create("age", None, None, 101, [], label_shift=1)
    ages = torch.tensor([1, 13, 14, 19, 20, 35, 36, 65, 66, 100])  # y' = age - 1
    assert bins.coarse(ages).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert bins.names[2] == "young adult"


def test_levels_preset_is_one_bin_per_rank():
    bins = ConceptBins.create("levels", None, None, 5, ["bad", "poor", "fair", "good", "great"])
    assert bins.coarse(torch.arange(5)).tolist() == [0, 1, 2, 3, 4]
    assert bins.names == ("bad", "poor", "fair", "good", "great")


@pytest.mark.parametrize("edges, names, match", [
    ([0, 4, 2], ["a", "b", "c"], "strictly increasing"),
    ([0, 2, 2], ["a", "b", "c"], "strictly increasing"),
    ([1, 3, 6], ["a", "b", "c"], "first edge must be 0"),  # a gap below the first bin
    ([0, 3, 12], ["a", "b", "c"], "would be empty"),
    ([0, 3], ["a", "b", "c"], "2 edges but 3 names"),
    ([0], ["a"], "at least 2 bins"),
])
def test_bad_edges_are_rejected(edges, names, match):
    with pytest.raises(NumclipError, match=match):
        ConceptBins.create(None, edges, names, 10, [])


def test_bad_preset_and_half_custom():
    with pytest.raises(NumclipError, match="unknown preset"):
        ConceptBins.create("shoe sizes", None, None, 10, [])
    with pytest.raises(NumclipError, match="both edges and names"):
        ConceptBins.create(None, [0, 5], None, 10, [])


def test_adapter_is_residual_and_normalised():
    torch.manual_seed(0)
    adapter = ImageAdapter(16, alpha=0.8)
    f = torch.randn(3, 16)
    out = adapter(f)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    expected = torch.nn.functional.normalize(0.8 * adapter.net(f) + 0.2 * f, dim=-1)
    torch.testing.assert_close(out, expected)
    identity = ImageAdapter(16, alpha=0.0)
    torch.testing.assert_close(identity(f), torch.nn.functional.normalize(f, dim=-1))


def test_regressor_formula_and_initialisation():
    anchors = torch.tensor([0.0, 13.0, 19.0, 35.0, 65.0])
    reg = SSRRegressor(anchors)
    assert reg.hidden.weight.std() < 0.01 and reg.hidden.bias.abs().sum() == 0
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0, 0.5]])
    p = torch.softmax(logits, -1)
    delta = torch.tanh(reg.shift(torch.relu(reg.hidden(logits))))
    torch.testing.assert_close(reg(logits), (p * anchors / (1 + delta)).sum(-1))
    # near-zero init: the output starts at the expectation over the anchors (bin 0 contributes 0)
    torch.testing.assert_close(reg(logits), (p * anchors).sum(-1), atol=1e-2, rtol=1e-3)
    plain = SSRRegressor(anchors, use_shift=False)
    torch.testing.assert_close(plain(logits), (p * anchors).sum(-1))


def test_concept_model_prompts_losses_and_round_trip(tiny_backbone, tmp_path):
    params = load_params(None)
    model = build_model(params, "numclip_faithful", tiny_backbone)
    assert isinstance(model, ConceptModel)
    # variable-length concept names: "a couple of" keeps its 3 tokens, "many" its 1
    assert model.prompts.rank_lengths.tolist() == [2, 3, 2, 1, 1]
    ids = model.prompts.token_ids
    n = model.prompts.context.shape[0]
    assert (ids.argmax(dim=1) == 1 + n + model.prompts.rank_lengths + 1).all(), "EOT right after each name + '.'"
    images, labels = torch.randn(6, 3, 64, 64), torch.tensor([0, 1, 3, 5, 8, 9])
    parts = model.forward_parts(images)
    assert parts[2].shape == (6, 5), "logits over the 5 concepts"
    weights = params.method("numclip_faithful").loss
    loss, terms = training_loss(model, *parts, labels, weights)
    assert set(terms) == {"ranking_ce", "ranking_kl", "regression"}
    logits, fused = head_outputs(model, *parts[:2], labels, weights)
    assert set(fused) == {"ranking_ce"} and torch.equal(logits, parts[2])
    fused_loss, fused_terms = training_loss(model, *parts[:2], logits, labels, weights, fused)
    assert torch.equal(fused_loss, loss) and all(torch.equal(fused_terms[k], terms[k]) for k in terms), \
        "the fused head + loss is the same arithmetic off CUDA"
    loss.backward()
    assert model.adapter.net[0].weight.grad is not None and model.regressor.shift.weight.grad is not None
    rank, value = model.readout(parts[2].detach())
    assert rank.min() >= 0 and rank.max() <= 9 and value.shape == (6,)
    extra = model.extra_readouts(torch.tensor([[0.0, 0.0, 9.0, 0.0, 0.0]]))
    assert extra["concept_argmax"].tolist() == [2.5], "the centre of bin {3, 4} (labels 2, 3)"
    model.eval()
    with torch.no_grad():
        before = model(images)
    save_model(model, tmp_path / "n.safetensors")
    loaded = load_model(tmp_path / "n.safetensors")
    assert isinstance(loaded, ConceptModel) and loaded.bins == model.bins
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), before, rtol=0, atol=0)
        torch.testing.assert_close(loaded.readout(before)[1], model.readout(before)[1])


def test_head_config_validation():
    with pytest.raises(NumclipError, match="methods.x: head: concepts learns one embedding per concept: use learner"):
        load_params(None, ["methods.x.learner=interpolated", "methods.x.head=concepts"])
    with pytest.raises(NumclipError, match="loss.regression needs head: concepts"):
        load_params(None, ["methods.x.learner=plain", "methods.x.loss.regression=1.0"])
