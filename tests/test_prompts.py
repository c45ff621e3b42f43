"""Prompt layout (SOT / context / rank / '.' / EOT), initialisation options and the text tower."""

import pytest
import torch

from numclip.config import method_config
from numclip.core.errors import NumclipError
from numclip.models.prompts import ContextPrompts, InterpolatedPrompts, build_prompt_learner
from numclip.models.text import TextTower

WORDS = ["one", "two", "three", "four", "five", "six"]
SOT, EOT = 49406, 49407


def _learner(backbone, **kw):
    method = method_config(**{"learner": "plain", **kw})
    return build_prompt_learner(method, TextTower(backbone.model), backbone.tokenizer, WORDS,
                                "a photo of {} objects.")


@pytest.mark.parametrize("position", ["tail", "front", "middle"])
def test_layout(tiny_backbone, position):
    learner = _learner(tiny_backbone, context_init=None, n_ctx=4, tokens_per_rank=2, rank_position=position)
    tower = TextTower(tiny_backbone.model)
    emb, pool = learner(tower)
    k, n, m = len(WORDS), 4, 2
    assert emb.shape == (k, tower.context_length, tower.width)
    ids = learner.token_ids
    assert (ids[:, 0] == SOT).all() and (ids[:, 1 + n + m + 1] == EOT).all()
    assert (pool == 1 + n + m + 1).all(), "the feature is read at the EOT position"
    table = tower.tower.token_embedding.weight
    torch.testing.assert_close(emb[:, 0], table[SOT].expand(k, -1))
    torch.testing.assert_close(emb[:, 1 + n + m + 1], table[EOT].expand(k, -1))
    dot = tiny_backbone.tokenizer(["."])[0, 1]
    torch.testing.assert_close(emb[:, 1 + n + m], table[dot].expand(k, -1))
    ctx, rank = learner.context.expand(k, -1, -1), learner.rank_embeddings()
    expected = {"tail": [ctx, rank], "front": [rank, ctx], "middle": [ctx[:, :2], rank, ctx[:, 2:]]}[position]
    torch.testing.assert_close(emb[:, 1:1 + n + m], torch.cat(expected, dim=1))


def test_context_from_text_and_rank_words(tiny_backbone):
    learner = _learner(tiny_backbone, context_init="a photo of", rank_specific_context=True)
    tower = TextTower(tiny_backbone.model)
    ctx_ids = tiny_backbone.tokenizer(["a photo of"])[0, 1:4]
    assert learner.context.shape == (len(WORDS), 3, tower.width), "n = token count of the init text"
    torch.testing.assert_close(learner.context[2], tower.embed(ctx_ids))
    four = tiny_backbone.tokenizer(["four"])[0, 1]
    torch.testing.assert_close(learner.rank_embeds[3, 0], tower.embed(four))


def test_fixed_prompts_equal_encode_text(tiny_backbone):
    learner = build_prompt_learner(method_config(learner="fixed"), TextTower(tiny_backbone.model),
                                   tiny_backbone.tokenizer, WORDS, "a photo of {} objects.")
    tower = TextTower(tiny_backbone.model)
    with torch.no_grad():
        ours = tower.encode(*learner(tower))
        clip = tiny_backbone.model.encode_text(tiny_backbone.tokenizer([f"a photo of {w} objects." for w in WORDS]))
    torch.testing.assert_close(ours, clip)


def test_interpolated_rank_embeddings(tiny_backbone):
    learner = _learner(tiny_backbone, learner="interpolated", num_base_ranks=3, interpolation="linear")
    assert isinstance(learner, InterpolatedPrompts)
    assert learner.rank_embeds.shape[0] == 3, "only L base embeddings are learned"
    blended = learner.rank_embeddings()
    expected = torch.einsum("kl,lmw->kmw", learner.interpolation, learner.rank_embeds)
    torch.testing.assert_close(blended, expected)
    # base words are the task words at the anchors: ranks 0, 2.5 -> 2 (round half even), 5
    tower = TextTower(tiny_backbone.model)
    for base, word in zip(learner.rank_embeds, ["one", "three", "six"]):
        torch.testing.assert_close(base[0], tower.embed(tiny_backbone.tokenizer([word])[0, 1]))


def test_gradients_reach_context_and_base_ranks(tiny_backbone):
    learner = _learner(tiny_backbone, learner="interpolated", num_base_ranks=2)
    tower = TextTower(tiny_backbone.model)
    tower.encode(*learner(tower)).sum().backward()
    assert learner.context.grad is not None and learner.context.grad.abs().sum() > 0
    assert learner.rank_embeds.grad is not None and learner.rank_embeds.grad.abs().sum() > 0


def test_rank_words_file_line_count(tiny_backbone, tmp_path):
    f = tmp_path / "ranks.txt"
    f.write_text("young\nold\n")
    with pytest.raises(NumclipError, match=r"has 2 lines but num_base_ranks is 3"):
        _learner(tiny_backbone, learner="interpolated", num_base_ranks=3, rank_words_file=str(f))
    learner = _learner(tiny_backbone, learner="interpolated", num_base_ranks=2, rank_words_file=str(f))
    assert isinstance(learner, ContextPrompts)
    with pytest.raises(NumclipError, match=r"has 2 lines but data.num_ranks is 6"):
        _learner(tiny_backbone, rank_words_file=str(f))


def test_random_init_is_seeded(tiny_backbone):
    a = _learner(tiny_backbone, context_init=None, rank_init="random")
    b = _learner(tiny_backbone, context_init=None, rank_init="random")
    torch.testing.assert_close(a.context, b.context)
    assert a.context.std().item() == pytest.approx(0.02, rel=0.5)


def test_prompt_too_long(tiny_backbone):
    with pytest.raises(NumclipError, match="does not fit"):
        _learner(tiny_backbone, context_init=None, n_ctx=30)


# ------------------------------------------------------------- fidelity to the released prompt learner
def test_each_rank_keeps_the_token_count_of_its_own_file_word(tiny_backbone, tmp_path):
    """learner plain, a rank words file and tokens_per_rank null: the released code tokenises each
    class name from the file, so a two-token phrase keeps both tokens and EOT moves after it."""
    phrases = ["baby", "young adult", "old", "very old person", "teen", "adult"]
    f = tmp_path / "ages.txt"
    f.write_text("\n".join(phrases) + "\n")
    learner = _learner(tiny_backbone, rank_words_file=str(f), tokens_per_rank=None, context_init="a photo of")
    tower = TextTower(tiny_backbone.model)
    tokens = [len(tiny_backbone.tokenizer([p])[0].nonzero()) - 2 for p in phrases]  # between SOT and EOT
    assert tokens[1] == 2 and tokens[3] == 3, "the phrases are several tokens long"
    assert learner.rank_lengths.tolist() == tokens
    # the pooled (EOT) position is after ctx (3 tokens), the phrase's own tokens and "."
    assert learner(tower)[1].tolist() == [1 + 3 + t + 1 for t in tokens]
    young, adult = tiny_backbone.tokenizer(["young adult"])[0, 1:3]
    torch.testing.assert_close(learner.rank_embeds[1, :2], tower.embed(torch.stack([young, adult])))


def test_rank_specific_random_context_is_drawn_independently_per_rank(tiny_backbone):
    """The released code draws K independent N(0, 0.02^2) contexts; a shared one is a single draw."""
    learner = _learner(tiny_backbone, context_init=None, n_ctx=4, rank_specific_context=True)
    context = learner.context
    assert context.shape[:2] == (len(WORDS), 4)
    assert all(not torch.equal(context[0], context[k]) for k in range(1, len(WORDS)))
    assert context.std().item() == pytest.approx(0.02, rel=0.2)
    shared = _learner(tiny_backbone, context_init=None, n_ctx=4)
    assert shared.context.shape == (4, context.shape[-1])


def test_underscores_read_as_spaces_in_word_files_and_context_init(tiny_backbone, tmp_path):
    """As the released code (`name.replace("_", " ")`, `ctx_init.replace("_", " ")`)."""
    f = tmp_path / "words.txt"
    f.write_text("\n".join(["one", "two", "three", "four", "five", "six_or_more"]) + "\n")
    spaced = tmp_path / "spaced.txt"
    spaced.write_text("\n".join(["one", "two", "three", "four", "five", "six or more"]) + "\n")
    a = _learner(tiny_backbone, rank_words_file=str(f), tokens_per_rank=None, context_init="a_photo_of")
    b = _learner(tiny_backbone, rank_words_file=str(spaced), tokens_per_rank=None, context_init="a photo of")
    torch.testing.assert_close(a.context, b.context)
    torch.testing.assert_close(a.rank_embeds, b.rank_embeds)
    assert a.rank_lengths.tolist() == b.rank_lengths.tolist() and a.rank_lengths[-1] == 3
