"""Methods as typed variants: each learner owns its keys, meaningless combinations are one-line
errors naming the method and the keys, the registries agree, and the model card is typed."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from numclip.cli import main
from numclip.config import LearningRates, ModelConfig, load_params
from numclip.config.methods import HEADS, METHOD_VARIANTS, FixedMethod, PlainMethod, method_config
from numclip.core.errors import NumclipError
from numclip.models.backbone import create_backbone
from numclip.models.ordinal import HEADS as MODEL_HEADS
from numclip.models.ordinal import RankPromptModel, build_model, load_model, save_model
from numclip.models.prompts import LEARNERS, PromptLearner


@pytest.mark.parametrize("overrides, needle", [
    (["methods.zeroshot.head=concepts"], "methods.zeroshot: learner: fixed trains nothing, but head: concepts"),
    (["methods.zeroshot.loss.ce=0.5"], "methods.zeroshot: learner: fixed trains nothing, so loss has no effect"),
    (["methods.coop.num_base_ranks=4"], "methods.coop.num_base_ranks: Extra inputs are not permitted"),
    (["methods.coop.adapter_alpha=0.5"], "methods.coop: adapter_alpha only apply to head: concepts"),
    (["methods.coop.loss={ce: 0, kl: 0}"], "methods.coop.loss: every loss weight"),
    (["methods.coop.rank_init=random", "methods.coop.tokens_per_rank=null"], "methods.coop: tokens_per_rank: null"),
    (["methods.ordinalclip.head=concepts"], "methods.ordinalclip: head: concepts learns one embedding"),
    (["methods.coop.learner=ordinal"], "methods.coop: Input tag 'ordinal' found using 'learner' does not match"),
])
def test_meaningless_combinations_are_one_line_errors(overrides, needle):
    with pytest.raises(NumclipError) as err:
        load_params(None, overrides)
    assert needle in str(err.value)
    assert "\n" not in str(err.value), "one mistake, one line"


def test_the_cli_prints_a_method_mistake_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--set", "methods.zeroshot.head=concepts"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "methods.zeroshot" in err and "Traceback" not in err


def test_each_variant_is_its_own_class_and_knows_whether_it_trains():
    params = load_params(None)
    assert isinstance(params.method("zeroshot"), FixedMethod) and not params.method("zeroshot").trains
    assert isinstance(params.method("coop"), PlainMethod) and params.method("coop").trains
    assert not hasattr(params.method("zeroshot"), "n_ctx"), "a fixed prompt has no context"


def test_the_registries_agree(tiny_backbone):
    """Every learner of the params has a prompt-learner class, every head a model class, and every
    group a learner names is a learning rate of train.lr."""
    assert set(LEARNERS) == set(METHOD_VARIANTS)
    assert set(MODEL_HEADS) == set(HEADS)
    rates = set(LearningRates.model_fields)
    for cls in LEARNERS.values():
        assert issubclass(cls, PromptLearner)
    learner = build_model(load_params(None), "ordinalclip", tiny_backbone).prompts
    assert set(learner.trainable()) <= rates


class _Scaled(PromptLearner):
    """A learner that is not a ContextPrompts: one learnable scale on fixed prompts."""

    def __init__(self, inner: PromptLearner):
        super().__init__()
        self.inner, self.scale = inner, torch.nn.Parameter(torch.ones(()))

    def forward(self, tower):
        embeddings, pool = self.inner(tower)
        return embeddings * self.scale, pool

    def trainable(self):
        return {"context": [self.scale]}


def test_a_learner_of_any_class_gets_its_named_groups_trained():
    backbone = create_backbone(ModelConfig(arch="numclip-tiny"))  # its own: parameter_groups sets requires_grad
    model = build_model(load_params(None), "zeroshot", backbone)
    model = RankPromptModel(backbone, _Scaled(model.prompts), model.card)
    groups = {g["name"]: g["params"] for g in model.parameter_groups(LearningRates())}
    assert groups["context"] == [model.prompts.scale] and model.prompts.scale.requires_grad


def test_the_model_card_is_typed_and_refuses_a_broken_one(tiny_backbone, tmp_path):
    model = build_model(load_params(None), "numclip_faithful", tiny_backbone)
    path = tmp_path / "m.safetensors"
    save_model(model, path, extra={"best_epoch": 3})
    card = load_model(path).card
    assert card.best_epoch == 3 and card.method_config.head == "concepts" and card.concepts is not None
    assert card.prompt_words == card.concepts.names and card.num_ranks == len(card.rank_words)

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["numclip"])
    broken = tmp_path / "broken.safetensors"
    save_file(load_file(str(path)), str(broken), metadata={"numclip": json.dumps(dict(meta, num_ranks="many"))})
    with pytest.raises(NumclipError, match=r"broken.safetensors: model card key num_ranks"):
        load_model(broken)


def test_an_older_card_with_every_learner_key_still_loads(tiny_backbone, tmp_path):
    """Before the typed variants a card stored every key for every learner (n_ctx for zero-shot)."""
    model = build_model(load_params(None), "zeroshot", tiny_backbone)
    path = tmp_path / "z.safetensors"
    save_model(model, path)
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["numclip"])
    meta["method_config"].update(n_ctx=4, context_init="a photo of", num_base_ranks=3, interpolation="linear")
    save_file(load_file(str(path)), str(path), metadata={"numclip": json.dumps(meta)})
    assert isinstance(load_model(path).card.method_config, FixedMethod)


def test_method_config_builds_the_variant_of_its_learner():
    assert isinstance(method_config(learner="fixed"), FixedMethod)
    with pytest.raises(Exception, match="num_base_ranks"):
        method_config(learner="plain", num_base_ranks=3)


def test_every_loss_weight_has_its_term():
    from numclip.config import LossWeights
    from numclip.config.methods import TERM_WEIGHTS
    from numclip.training.objective import TERMS

    assert list(TERMS) == list(TERM_WEIGHTS), "TERMS follows TERM_WEIGHTS (names and order: the sum's order)"
    assert all(LossWeights.model_fields[name].annotation is float for name in TERM_WEIGHTS)
