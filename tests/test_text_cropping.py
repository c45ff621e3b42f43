"""Text-encoder cropping is exact: features and gradients from the shortest sequence that holds every
pooled token equal the full-context ones, for the tiny model and real open_clip architectures (random
weights), every prompt learner and rank position, variable-length rank words and raw captions."""

import pytest
import torch

from numclip.config import ModelConfig, method_config
from numclip.models.backbone import create_backbone
from numclip.models.prompts import build_prompt_learner
from numclip.models.text import TextTower, encode_token_ids

ATOL = 1e-5
WORDS = ["one", "two", "three", "four", "five", "six"]
LONG_WORDS = ["one", "twenty-one", "a hundred and one", "two", "thirty seven", "many"]  # 1..4 tokens
TEMPLATE = "a photo of {} objects."

LEARNERS = [  # (id, method params, rank words)
    ("fixed", {"learner": "fixed"}, WORDS),
    *[(f"plain-{pos}", {"learner": "plain", "context_init": None, "n_ctx": 4, "tokens_per_rank": 2,
                        "rank_position": pos}, WORDS) for pos in ("front", "middle", "tail")],
    *[(f"interpolated-{pos}", {"learner": "interpolated", "num_base_ranks": 3, "context_init": "a photo of",
                               "tokens_per_rank": 3, "rank_position": pos}, WORDS)
      for pos in ("front", "middle", "tail")],
    ("plain-rank-specific", {"learner": "plain", "context_init": None, "n_ctx": 3, "tokens_per_rank": 1,
                             "rank_specific_context": True}, WORDS),
    ("plain-variable-length-words", {"learner": "plain", "context_init": "a photo of"}, LONG_WORDS),
]


@pytest.fixture(scope="module", params=["numclip-tiny", "ViT-B-32", "RN50"])
def backbone(request):
    torch.manual_seed(0)
    return create_backbone(ModelConfig(arch=request.param))


def _sequence_lengths(tower: TextTower) -> list[int]:
    """The sequence length each pass through the transformer ran (recorded by a forward hook)."""
    seen: list[int] = []
    tower.tower.transformer.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    return seen


@pytest.mark.parametrize("name, params, words", LEARNERS, ids=[case[0] for case in LEARNERS])
def test_prompt_features_and_gradients_equal_the_full_context(backbone, name, params, words):
    tower = TextTower(backbone.model)
    learner = build_prompt_learner(method_config(**params), tower, backbone.tokenizer, words, TEMPLATE)
    results = {}
    for crop in (True, False):
        tower.crop = crop
        learner.zero_grad(set_to_none=True)
        embeddings, pool = learner(tower)
        features = tower.encode(embeddings, pool)
        features.square().sum().backward()
        results[crop] = features.detach(), {n: p.grad.clone() for n, p in learner.named_parameters()}
    (cropped, cropped_grads), (full, full_grads) = results[True], results[False]
    torch.testing.assert_close(cropped, full, atol=ATOL, rtol=0)
    for key, grad in full_grads.items():  # relative to the largest entry: float32 sums in another order
        scale = grad.abs().max()
        torch.testing.assert_close(cropped_grads[key] / scale, grad / scale, atol=ATOL, rtol=0,
                                   msg=lambda text, key=key: f"gradient of {key}: {text}")
    assert int(pool.max()) + 1 < tower.context_length, "the prompts leave positions to crop"


def test_the_transformer_runs_only_up_to_the_last_pooled_token(backbone):
    tower = TextTower(backbone.model)
    learner = build_prompt_learner(method_config(learner="plain", context_init="a photo of"), tower,
                                   backbone.tokenizer, LONG_WORDS, TEMPLATE)
    seen = _sequence_lengths(tower)
    embeddings, pool = learner(tower)
    with torch.no_grad():
        tower.encode(embeddings, pool)
        tower.crop = False
        tower.encode(embeddings, pool)
    assert seen == [int(pool.max()) + 1, tower.context_length]


@torch.no_grad()
def test_captions_equal_encode_text(backbone):
    captions = ["two red circles.", "a photo of ten objects.",
                "there are seven blue triangles and three green squares on a white background.", "one"]
    ids = backbone.tokenizer(captions)
    expected = backbone.model.encode_text(ids)
    torch.testing.assert_close(encode_token_ids(backbone.model, ids), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(encode_token_ids(backbone.model, ids, crop=False), expected, atol=ATOL, rtol=0)


def test_a_bidirectional_tower_is_never_cropped(tiny_backbone):
    tower = TextTower(tiny_backbone.model)
    tower.attn_mask = None  # what a tower built with no_causal_mask has
    assert tower.sequence_length(torch.tensor([3, 5]), 32) == 32
    assert TextTower(tiny_backbone.model).sequence_length(torch.tensor([3, 5]), 32) == 6
    assert TextTower(tiny_backbone.model).sequence_length(torch.tensor([], dtype=torch.long), 32) == 32
