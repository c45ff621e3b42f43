"""Prompt learners (docs/methods.md, Prompt learners): what sentence each rank's text prototype is encoded from.

A learner returns token *embeddings* [K, L, W] and the position to pool [K]; the text tower
(`numclip.models.text.TextTower`) turns them into prototypes. Layout of a learned prompt:

    [SOT] ctx_1 .. ctx_n  rank_k,1 .. rank_k,m  "."  [EOT] pad ..      (rank_position = tail)
    [SOT] rank_k,1 .. rank_k,m  ctx_1 .. ctx_n  "."  [EOT] pad ..      (front)
    [SOT] ctx_1 .. ctx_n//2  rank_k,..  ctx_n//2+1 .. ctx_n  "."  [EOT]  (middle)
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from numclip.config import read_word_file
from numclip.config.methods import ContextMethod, MethodBase
from numclip.config.schema import as_prompt_text
from numclip.core.errors import NumclipError
from numclip.models.interpolation import anchors, interpolation_weights
from numclip.models.text import TextTower

INIT_STD = 0.02
PLACEHOLDER = "X"


class PromptLearner(nn.Module):
    """A prompt learner: `forward(tower)` gives the prompts' token embeddings [K, L, W] and the
    position to pool [K]; `build` makes one from its method's params; `trainable` names its
    parameter groups (the keys of train.lr) so that the optimiser never misses one."""

    @classmethod
    def build(cls, method: MethodBase, tower: TextTower, tokenizer: Callable, rank_words: list[str],
              zeroshot_template: str, generator: torch.Generator) -> "PromptLearner":
        raise NotImplementedError

    def trainable(self) -> dict[str, list[nn.Parameter]]:
        raise NotImplementedError

    def encode(self, tower: TextTower) -> torch.Tensor:
        """The class vectors [K, D] the head compares images with: the encoded prompts."""
        embeddings, pool_index = self(tower)
        return tower.encode(embeddings, pool_index)


class FixedPrompts(PromptLearner):
    """Plain text prompts (zero-shot CLIP): nothing to learn."""

    def __init__(self, token_ids: torch.Tensor):
        super().__init__()
        self.register_buffer("token_ids", token_ids, persistent=False)

    @classmethod
    def build(cls, method, tower, tokenizer, rank_words, zeroshot_template, generator) -> "FixedPrompts":
        ids = tokenizer([zeroshot_template.format(w) for w in rank_words])
        return cls(ids.to(tower.tower.token_embedding.weight.device))

    def trainable(self) -> dict[str, list[nn.Parameter]]:
        return {}

    def forward(self, tower: TextTower) -> tuple[torch.Tensor, torch.Tensor]:
        return tower.embed(self.token_ids), tower.pool_index(self.token_ids)


class ContextPrompts(PromptLearner):
    """CoOp: learnable context vectors and one independent learnable embedding per rank."""

    def __init__(self, token_ids: torch.Tensor, frame: torch.Tensor, context: torch.Tensor,
                 rank_embeds: torch.Tensor, rank_position: str, rank_lengths: torch.Tensor):
        super().__init__()
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("rank_lengths", rank_lengths, persistent=False)  # tokens used per rank
        self.register_buffer("frame", frame)  # token embeddings of the pseudo sentence (SOT, ".", EOT)
        self.context = nn.Parameter(context)  # [n, W] shared, or [K, n, W] rank-specific
        self.rank_embeds = nn.Parameter(rank_embeds)
        self.rank_position = rank_position

    @classmethod
    def build(cls, method, tower, tokenizer, rank_words, zeroshot_template, generator) -> "ContextPrompts":
        return cls(*_learned_prompt_parts(method, tower, tokenizer, rank_words, len(rank_words), generator))

    def trainable(self) -> dict[str, list[nn.Parameter]]:
        return {"context": [self.context], "rank": [self.rank_embeds]}

    @property
    def num_ranks(self) -> int:
        return self.token_ids.shape[0]

    def rank_embeddings(self) -> torch.Tensor:
        """[K, m, W]"""
        return self.rank_embeds

    def forward(self, tower: TextTower) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.num_ranks
        ctx = self.context if self.context.dim() == 3 else self.context.expand(k, -1, -1)
        rank = self.rank_embeddings()
        n, m = ctx.shape[1], rank.shape[1]
        frame = self.frame.to(ctx.dtype)
        if self.rank_position == "tail":
            content = torch.cat([ctx, rank], dim=1)
            # ranks of fewer than m tokens: their row of the frame already holds ".", EOT there
            used = torch.arange(n + m, device=ctx.device)[None, :] < (n + self.rank_lengths)[:, None]
            content = torch.where(used[..., None], content, frame[:, 1:1 + n + m])
        elif self.rank_position == "front":
            content = torch.cat([rank, ctx], dim=1)
        else:
            half = n // 2
            content = torch.cat([ctx[:, :half], rank, ctx[:, half:]], dim=1)
        embeddings = torch.cat([frame[:, :1], content, frame[:, 1 + n + m:]], dim=1)
        return embeddings, tower.pool_index(self.token_ids)


class InterpolatedPrompts(ContextPrompts):
    """OrdinalCLIP: K rank embeddings as fixed blends W [K, L] of L learnable base embeddings."""

    def __init__(self, token_ids, frame, context, base_rank_embeds, rank_position, rank_lengths, weights):
        super().__init__(token_ids, frame, context, base_rank_embeds, rank_position, rank_lengths)
        self.register_buffer("interpolation", weights.to(base_rank_embeds.dtype))

    @classmethod
    def build(cls, method, tower, tokenizer, rank_words, zeroshot_template, generator) -> "InterpolatedPrompts":
        k, learned = len(rank_words), method.num_base_ranks
        if not 1 <= learned <= k:
            raise NumclipError(f"num_base_ranks is {learned} but must be in 1..{k} (data.num_ranks)")
        parts = _learned_prompt_parts(method, tower, tokenizer, rank_words, learned, generator)
        weights = interpolation_weights(k, learned, method.interpolation, method.gaussian_bandwidth)
        return cls(*parts, weights=weights.to(parts[0].device))

    def rank_embeddings(self) -> torch.Tensor:
        return torch.einsum("kl,lmw->kmw", self.interpolation, self.rank_embeds)


def _content_ids(tokenizer: Callable, text: str) -> torch.Tensor:
    """Token ids of `text` between SOT and EOT."""
    ids = tokenizer([text])[0]
    eot = int(ids.argmax())
    return ids[1:eot]


def _word_embeddings(tower: TextTower, tokenizer: Callable, words: list[str], m: int,
                     generator: torch.Generator) -> torch.Tensor:
    """[len(words), m, W]: the first m token embeddings of each word; random where a word is shorter."""
    out = torch.randn(len(words), m, tower.width, generator=generator) * INIT_STD
    with torch.no_grad():
        for i, word in enumerate(words):
            ids = _content_ids(tokenizer, word)[:m].to(tower.tower.token_embedding.weight.device)
            out[i, : ids.numel()] = tower.embed(ids).float().cpu()
    return out


def _learned_prompt_parts(method: ContextMethod, tower: TextTower, tokenizer: Callable, rank_words: list[str],
                         learned: int, generator: torch.Generator) -> tuple:
    """What ContextPrompts is made of, for `learned` rank embeddings initialised as configured."""
    k = len(rank_words)
    device = tower.tower.token_embedding.weight.device
    context = _initial_context(method, tower, tokenizer, k, generator)
    words = None if method.rank_init == "random" else _init_words(method, rank_words, learned)
    lengths = _rank_lengths(method, tokenizer, words, k)
    n, m = context.shape[-2], max(lengths)
    if n + m + 3 > tower.context_length:
        raise NumclipError(f"prompt of {n} context + {m} rank tokens does not fit the text context "
                           f"length {tower.context_length}")

    token_ids = tokenizer([" ".join([PLACEHOLDER] * (n + length)) + "." for length in lengths]).to(device)
    with torch.no_grad():
        frame = tower.embed(token_ids).float()
    if words is None:
        base = torch.randn(learned, m, tower.width, generator=generator) * INIT_STD
    else:
        base = _word_embeddings(tower, tokenizer, words, m, generator)
    return (token_ids, frame, context.to(device), base.to(device), method.rank_position,
            torch.tensor(lengths, device=device))


class ProbeWeights(PromptLearner):
    """No language: one free weight vector per rank (and a bias for the linear probe), drawn at random,
    trained as the head. The text tower is never run; `encode` returns the weights themselves."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)

    @classmethod
    def build(cls, method, tower, tokenizer, rank_words, zeroshot_template, generator) -> "ProbeWeights":
        k, d = len(rank_words), tower.output_dim
        device = tower.tower.token_embedding.weight.device
        if method.probe == "cosine":
            return cls((torch.randn(k, d, generator=generator) * INIT_STD).to(device), None)
        bound = d ** -0.5  # nn.Linear's default initialisation, from the given generator
        weight = (torch.rand(k, d, generator=generator) * 2 - 1) * bound
        bias = (torch.rand(k, generator=generator) * 2 - 1) * bound
        return cls(weight.to(device), bias.to(device))

    def trainable(self) -> dict[str, list[nn.Parameter]]:
        return {"head": [p for p in (self.weight, self.bias) if p is not None]}

    def encode(self, tower: TextTower) -> torch.Tensor:
        return self.weight


# The prompt learner of each `learner` value (numclip.config.methods has the params class of each).
LEARNERS: dict[str, type[PromptLearner]] = {
    "fixed": FixedPrompts, "plain": ContextPrompts, "interpolated": InterpolatedPrompts, "probe": ProbeWeights}


def build_prompt_learner(method: MethodBase, tower: TextTower, tokenizer: Callable,
                         rank_words: list[str], zeroshot_template: str, seed: int = 0) -> PromptLearner:
    """The learner for `method.learner`, initialised as configured (deterministic under `seed`)."""
    generator = torch.Generator().manual_seed(seed)
    return LEARNERS[method.learner].build(method, tower, tokenizer, rank_words, zeroshot_template, generator)


def _initial_context(method: ContextMethod, tower: TextTower, tokenizer: Callable, k: int,
                     generator: torch.Generator) -> torch.Tensor:
    """[n, W] shared or [K, n, W] rank-specific: the embedded `context_init` text (each rank starts
    from it), or random N(0, 0.02^2), drawn independently for every rank when rank-specific."""
    if method.context_init:
        ctx_ids = _content_ids(tokenizer, as_prompt_text(method.context_init))
        with torch.no_grad():
            context = tower.embed(ctx_ids.to(tower.tower.token_embedding.weight.device)).float().cpu().clone()
        return context.unsqueeze(0).repeat(k, 1, 1) if method.rank_specific_context else context
    shape = (k, method.n_ctx, tower.width) if method.rank_specific_context else (method.n_ctx, tower.width)
    return torch.randn(*shape, generator=generator) * INIT_STD


def _rank_lengths(method: ContextMethod, tokenizer: Callable, words: list[str] | None, k: int) -> list[int]:
    """Tokens per rank: `tokens_per_rank` for all, or (None) the token count of the word each rank is
    initialised from (the method's word file, else the task's): the params allow that only for a
    plain learner with word-initialised ranks at the tail (numclip.config.methods)."""
    if method.tokens_per_rank is not None:
        return [method.tokens_per_rank] * k
    return [max(len(_content_ids(tokenizer, w)), 1) for w in words]


def _init_words(method: ContextMethod, rank_words: list[str], learned: int) -> list[str]:
    """Words for the learned rank embeddings: the method's file (exactly `learned` lines) or the
    task's rank words (at the anchor positions, for interpolated prompts)."""
    if method.rank_words_file is not None:
        words = read_word_file(method.rank_words_file)
        if len(words) != learned:
            what = "num_base_ranks" if method.learner == "interpolated" else "data.num_ranks"
            raise NumclipError(
                f"rank words file {method.rank_words_file} has {len(words)} lines but {what} is "
                f"{learned}: give one word per learned rank embedding")
        return words
    if learned == len(rank_words):
        return list(rank_words)
    positions = anchors(len(rank_words), learned).round().long().tolist()
    return [rank_words[p] for p in positions]

