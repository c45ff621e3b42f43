"""Count-aware CLIP building blocks: counterfactual captions, L_count, and the counting batch sampler."""

import math
import random
import re

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from numclip.config import ModelConfig
from numclip.core.errors import NumclipError
from numclip.counting import (
    COUNT_WORDS,
    COUNTS,
    CountingBatchSampler,
    CountMention,
    all_counterfactuals,
    count_captions,
    counterfactual,
    find_count,
    is_counting,
    with_count,
)
from numclip.data.synthetic import make_caption
from numclip.losses.contrastive import clip_contrastive_loss
from numclip.losses.counting import count_aware_clip_loss, counting_contrastive_loss
from numclip.models.backbone import create_backbone

# ---------------------------------------------------------------------------------------------- captions

NON_COUNTING = [
    "a photo of one red circle",  # singular: "one" is outside two..ten
    "a dog",
    "1 cat on a mat",
    "two cats and three dogs",  # two counts: which one does the image show?
    "two cats, two hats",  # the same count twice is still two mentions
    "an often visited tent",  # "ten" inside words
    "the tenth floor",
    "a ten-year-old boy",  # compound, not a count of objects
    "twenty two cats",  # part of a bigger number
    "two dozen eggs",
    "at five o'clock",
    "a 2.5 m wall",
    "1,000 birds",
    "a 3D render",
    "photos from 2020",
    "a 10% discount",
    "2-3 cats",
    "",
]


@pytest.mark.parametrize("caption", NON_COUNTING)
def test_non_counting_captions(caption):
    assert find_count(caption) is None and not is_counting(caption)
    rng = random.Random(0)
    assert counterfactual(caption, rng) is None
    assert all_counterfactuals(caption) is None and count_captions(caption) is None


@pytest.mark.parametrize("caption, mention", [
    ("a photo of four red circles", CountMention(11, 15, 4, "word")),
    ("Four parrots", CountMention(0, 4, 4, "word")),
    ("TEN apples", CountMention(0, 3, 10, "word")),
    ("3 cats", CountMention(0, 1, 3, "digit")),
    ("I saw 10 birds.", CountMention(6, 8, 10, "digit")),
    ("a 3D model of 2 cars in 2020", CountMention(14, 15, 2, "digit")),  # the other numbers are not counts
    ("often seven tents", CountMention(6, 11, 7, "word")),
])
def test_find_count(caption, mention):
    assert find_count(caption) == mention and is_counting(caption)


WORD = "|".join(COUNT_WORDS)


def test_counterfactual_word_keeps_the_rest_of_the_caption():
    caption = make_caption(4, "red", "circle")
    assert caption == "a photo of four red circles"
    for seed in range(20):
        new = counterfactual(caption, random.Random(seed))
        m = re.fullmatch(rf"a photo of ({WORD}) red circles", new)  # plural noun unchanged
        assert m is not None and m.group(1) != "four"


@pytest.mark.parametrize("caption, pattern, original", [
    ("Four parrots", r"(Two|Three|Five|Six|Seven|Eight|Nine|Ten) parrots", "Four"),
    ("FOUR parrots", r"(TWO|THREE|FIVE|SIX|SEVEN|EIGHT|NINE|TEN) parrots", "FOUR"),
    ("3 cats", r"(\d+) cats", "3"),
    ("ten apples, often red", rf"({WORD}) apples, often red", "ten"),
])
def test_counterfactual_keeps_form_and_case(caption, pattern, original):
    for seed in range(30):
        new = counterfactual(caption, random.Random(seed))
        m = re.fullmatch(pattern, new)
        assert m is not None, new
        assert m.group(1) != original
        if m.group(1).isdigit():
            assert int(m.group(1)) in COUNTS


def test_with_count_by_hand():
    assert with_count("Four parrots", find_count("Four parrots"), 7) == "Seven parrots"
    assert with_count("FOUR parrots", find_count("FOUR parrots"), 7) == "SEVEN parrots"
    assert with_count("see 3 cats", find_count("see 3 cats"), 10) == "see 10 cats"
    with pytest.raises(ValueError, match="count"):
        with_count("Four parrots", find_count("Four parrots"), 1)
    with pytest.raises(ValueError, match="does not match"):
        with_count("two parrots", find_count("Four parrots"), 5)


def test_counterfactual_is_deterministic_and_uniform_over_the_other_counts():
    caption = "a photo of five blue squares"
    assert counterfactual(caption, random.Random(3)) == counterfactual(caption, random.Random(3))
    rng_a, rng_b = random.Random(11), random.Random(11)
    assert [counterfactual(caption, rng_a) for _ in range(20)] == [counterfactual(caption, rng_b) for _ in range(20)]
    seen = {find_count(counterfactual(caption, random.Random(seed))).count for seed in range(300)}
    assert seen == set(COUNTS) - {5}


def test_all_counterfactuals():
    caption = "Six 2-euro coins"  # "2-euro" is a compound, "Six" the count
    others = all_counterfactuals(caption)
    assert others == [f"{w.capitalize()} 2-euro coins" for w in COUNT_WORDS if w != "six"]
    assert len(others) == 8 and caption not in others
    assert [find_count(c).count for c in all_counterfactuals("7 cats")] == [2, 3, 4, 5, 6, 8, 9, 10]


def test_count_captions_index_is_count_minus_two():
    captions = count_captions("a photo of three green triangles")
    assert len(captions) == 9
    assert captions[1] == "a photo of three green triangles"
    for i, c in enumerate(captions):
        assert find_count(c).count == i + 2
        assert c == make_caption(i + 2, "green", "triangle")


# ---------------------------------------------------------------------------------------------- loss

def _hand_loss(image, text, counterfactuals, scale):
    """-(1/N) sum_k log(exp(s cos(i,t)) / (exp(s cos(i,t)) + sum_m exp(s cos(i,cf_m)))), in math."""
    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / (math.hypot(*a) * math.hypot(*b))
    total = 0.0
    for i, t, cfs in zip(image, text, counterfactuals):
        pos = math.exp(scale * cos(i, t))
        total += -math.log(pos / (pos + sum(math.exp(scale * cos(i, cf)) for cf in cfs)))
    return total / len(image)


def test_counting_loss_hand_computed_m1():
    image = [[3.0, 4.0], [1.0, 0.0]]
    text = [[1.0, 0.0], [1.0, 1.0]]
    cfs = [[[0.0, 2.0]], [[-1.0, 0.5]]]
    # first row by hand: cos(i,t) = 0.6, cos(i,cf) = 0.8, s = 2
    first = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(1.6)))
    second = -math.log(math.exp(2 / math.sqrt(2)) /
                       (math.exp(2 / math.sqrt(2)) + math.exp(2 * -1 / math.sqrt(1.25))))
    expected = (first + second) / 2
    assert expected == pytest.approx(_hand_loss(image, text, cfs, 2.0))
    loss = counting_contrastive_loss(torch.tensor(image), torch.tensor(text), torch.tensor(cfs), 2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_counting_loss_hand_computed_m2_and_tensor_scale():
    image = [[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]]
    text = [[1.0, 1.5, 0.0], [0.2, -1.0, 0.3]]
    cfs = [[[0.5, 2.0, 1.0], [-1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]]
    scale = torch.tensor(3.5)
    loss = counting_contrastive_loss(torch.tensor(image), torch.tensor(text), torch.tensor(cfs), scale)
    assert loss.item() == pytest.approx(_hand_loss(image, text, cfs, 3.5), rel=1e-6)


def test_counting_loss_gradients_reach_every_input():
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    cfs = torch.randn(4, 3, 8, generator=g)
    scale = torch.tensor(10.0)
    for t in (image, text, cfs, scale):
        t.requires_grad_(True)
    counting_contrastive_loss(image, text, cfs, scale).backward()
    for t in (image, text):
        assert (t.grad.abs().sum(dim=-1) > 0).all()
    assert (cfs.grad.abs().sum(dim=-1) > 0).all()
    assert scale.grad.item() != 0


def test_counting_loss_empty_batch_is_zero_and_backpropagates():
    image = torch.zeros(0, 5, requires_grad=True)
    text = torch.zeros(0, 5, requires_grad=True)
    cfs = torch.zeros(0, 8, 5, requires_grad=True)
    loss = counting_contrastive_loss(image, text, cfs, 100.0)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert image.grad.shape == (0, 5)


def test_counting_loss_ignores_feature_scale():
    g = torch.Generator().manual_seed(1)
    image, text, cfs = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g), torch.randn(3, 2, 4, generator=g)
    ref = counting_contrastive_loss(image, text, cfs, 7.0)
    scaled = counting_contrastive_loss(image * torch.tensor([[2.0], [0.1], [30.0]]), 5 * text,
                                       cfs * (0.5 + torch.rand(3, 2, 1, generator=g)), 7.0)
    torch.testing.assert_close(scaled, ref)


def test_counting_loss_shape_errors():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        counting_contrastive_loss(torch.ones(2, 3), torch.ones(2, 4), torch.ones(2, 1, 3), 1.0)
    with pytest.raises(ValueError, match=r"\[N, M, D\].*\(2, 3\)"):
        counting_contrastive_loss(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 3), 1.0)
    with pytest.raises(ValueError, match=r"counterfactual \(3, 1, 3\)"):
        counting_contrastive_loss(torch.ones(2, 3), torch.ones(2, 3), torch.ones(3, 1, 3), 1.0)
    with pytest.raises(ValueError, match="M >= 1"):
        counting_contrastive_loss(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 0, 3), 1.0)
    with pytest.raises(ValueError, match="weight"):
        count_aware_clip_loss(torch.tensor(1.0), torch.tensor(1.0), -1.0)


# ---------------------------------------------------------------------------------------------- with CLIP

@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    backbone = create_backbone(ModelConfig(arch="numclip-tiny"), torch.device("cpu"))
    backbone.model.eval()  # no dropout: two forward passes must agree
    for p in backbone.model.parameters():
        p.requires_grad_(True)
    return backbone


CAPTIONS = [make_caption(2, "red", "circle"), make_caption(5, "blue", "square"),
            "a photo of one green triangle", make_caption(9, "white", "circle")]


def _grads(backbone, weight):
    """CLIP loss on the true captions; L_count on the counting ones, against one counterfactual each."""
    clip = backbone.model
    clip.zero_grad(set_to_none=True)
    images = torch.randn(len(CAPTIONS), 3, 64, 64, generator=torch.Generator().manual_seed(0))
    image_features = clip.encode_image(images)
    text_features = clip.encode_text(backbone.tokenizer(CAPTIONS))
    scale = clip.logit_scale.exp()
    clip_loss = clip_contrastive_loss(image_features, text_features, scale)
    rows = [i for i, c in enumerate(CAPTIONS) if is_counting(c)]
    rng = random.Random(0)
    cf_features = clip.encode_text(backbone.tokenizer([counterfactual(CAPTIONS[i], rng) for i in rows]))
    count_loss = counting_contrastive_loss(image_features[rows], text_features[rows], cf_features[:, None], scale)
    if weight is None:
        loss = clip_loss
    else:
        loss = count_aware_clip_loss(clip_loss, count_loss, weight)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in clip.named_parameters() if p.grad is not None}


def test_lambda_zero_is_plain_clip_and_lambda_one_reaches_both_towers(tiny_clip):
    assert [is_counting(c) for c in CAPTIONS] == [True, True, False, True]
    plain_loss, plain = _grads(tiny_clip, None)
    zero_loss, zero = _grads(tiny_clip, 0.0)
    torch.testing.assert_close(zero_loss, plain_loss)
    assert zero.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(zero[name], plain[name], msg=name)

    one_loss, one = _grads(tiny_clip, 1.0)
    assert one_loss.item() > plain_loss.item()
    assert not torch.allclose(one["token_embedding.weight"], plain["token_embedding.weight"])  # text tower
    assert not torch.allclose(one["text_projection"], plain["text_projection"])
    visual = [n for n in plain if n.startswith("visual.")]
    assert visual and any(not torch.allclose(one[n], plain[n]) for n in visual)  # image tower


# ---------------------------------------------------------------------------------------------- sampler

FLAGS = [i % 5 == 0 for i in range(100)]  # 20 counting, 80 non-counting


def _epochs(sampler, n=1):
    return [list(sampler) for _ in range(n)]


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_sampler_mix_per_batch(fraction):
    sampler = CountingBatchSampler(FLAGS, batch_size=8, fraction=fraction, seed=0)
    batches = list(sampler)
    assert len(sampler) == len(batches) == 100 // 8
    for batch in batches:
        assert len(batch) == 8 and all(0 <= i < 100 for i in batch)
        assert sum(FLAGS[i] for i in batch) == round(fraction * 8)


def test_sampler_without_drop_last_keeps_a_smaller_last_batch():
    sampler = CountingBatchSampler(FLAGS, batch_size=8, fraction=0.25, seed=0, drop_last=False)
    batches = list(sampler)
    assert len(sampler) == len(batches) == 13
    assert [len(b) for b in batches] == [8] * 12 + [4]
    assert sum(FLAGS[i] for i in batches[-1]) == round(0.25 * 4)
    assert len(CountingBatchSampler(FLAGS, batch_size=10, fraction=0.2, seed=0, drop_last=False)) == 10


def test_sampler_draws_each_pool_without_replacement_until_it_runs_out():
    sampler = CountingBatchSampler(FLAGS, batch_size=8, fraction=0.5, seed=0)
    batches = list(sampler)  # 4 counting per batch: the 20 counting samples are used up every 5 batches
    first_round = [i for b in batches[:5] for i in b if FLAGS[i]]
    assert sorted(first_round) == [i for i in range(100) if FLAGS[i]]
    non_counting = [i for b in batches for i in b if not FLAGS[i]]
    assert len(non_counting) == len(set(non_counting)) == 48  # 80 in the pool: no repeats this epoch


def test_sampler_is_deterministic_and_epochs_differ():
    a = _epochs(CountingBatchSampler(FLAGS, batch_size=8, fraction=0.25, seed=7), 3)
    b = _epochs(CountingBatchSampler(FLAGS, batch_size=8, fraction=0.25, seed=7), 3)
    c = _epochs(CountingBatchSampler(FLAGS, batch_size=8, fraction=0.25, seed=8), 1)
    assert a == b
    assert a[0] != a[1] != a[2] and a[0] != c[0]
    assert any(FLAGS[b_[0]] for b_ in a[0]) and not all(FLAGS[b_[0]] for b_ in a[0])  # shuffled within a batch


def test_sampler_in_a_dataloader():
    data = TensorDataset(torch.arange(100), torch.tensor(FLAGS))
    loader = DataLoader(data, batch_sampler=CountingBatchSampler(FLAGS, batch_size=10, fraction=0.3, seed=0))
    batches = list(loader)
    assert len(batches) == 10
    assert all(int(flags.sum()) == 3 for _, flags in batches)


@pytest.mark.parametrize("flags, batch_size, fraction, match", [
    (FLAGS, 0, 0.5, "batch_size"),
    (FLAGS, 8, 1.5, "fraction"),
    (FLAGS, 8, -0.1, "fraction"),
    (FLAGS, 8, float("nan"), "fraction"),
    ([False] * 10, 4, 0.25, "fraction=0.25 asks for counting"),
    ([True] * 10, 4, 0.5, "fraction=0.5 asks for non-counting"),
])
def test_sampler_errors(flags, batch_size, fraction, match):
    with pytest.raises(NumclipError, match=match):
        CountingBatchSampler(flags, batch_size=batch_size, fraction=fraction, seed=0)


def test_sampler_single_pool_edges_are_fine():
    assert all(len(b) == 4 for b in CountingBatchSampler([False] * 10, 4, 0.0, seed=0))
    assert all(len(b) == 4 for b in CountingBatchSampler([True] * 10, 4, 1.0, seed=0))
