"""The CLIP text transformer driven by token *embeddings*, so prompts can hold learnable vectors.

The feature is read at the pooling position CLIP uses (the EOT token for OpenAI-style towers),
found from the pseudo-sentence's token ids exactly as open_clip's `text_global_pool` does.

Cropping: CLIP's text transformer is causal, so the feature at the pooled position depends only on
the tokens up to it. Every pass runs the shortest sequence that holds the pooled position of every
row (embeddings, positional embeddings and causal mask cut alike), which is exact and, for prompts
of a few words in a 77-token context, several times cheaper than the full context the papers run.
"""

from __future__ import annotations

import torch
from torch import nn

from numclip.core.errors import NumclipError


class TextTower:
    """A view over an open_clip model's text transformer (CLIP or CustomTextCLIP with a TextTransformer).

    Not an nn.Module on purpose: it references the backbone's modules without registering them a
    second time, so state dicts stay free of shared tensors.
    """

    def __init__(self, clip_model: nn.Module):
        tower = clip_model.text if hasattr(clip_model, "text") else clip_model
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
        if not all(hasattr(tower, a) for a in needed) or getattr(tower, "cls_emb", None) is not None:
            raise NumclipError(
                f"learnable prompts need a CLIP-style text transformer; {type(tower).__name__} "
                f"(this architecture's text tower) has none. Use a CLIP/OpenCLIP architecture.")
        self.tower = tower
        self.pool_type = getattr(tower, "pool_type", getattr(clip_model, "text_pool_type", "argmax"))
        self.eos_id = getattr(tower, "eos_id", getattr(clip_model, "text_eos_id", None))
        self.attn_mask = getattr(tower, "attn_mask", None)
        if self.attn_mask is None:
            self.attn_mask = getattr(clip_model, "attn_mask", None)
        self.crop = True  # False runs the full context (the benchmark's baseline; results are the same)

    @property
    def width(self) -> int:
        return int(self.tower.token_embedding.weight.shape[1])

    @property
    def output_dim(self) -> int:
        """D, the width of the text features (after the projection)."""
        proj = getattr(self.tower, "text_projection", None)
        if isinstance(proj, nn.Linear):
            return int(proj.out_features)
        return self.width if proj is None else int(proj.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.tower.positional_embedding.shape[0])

    def parameters(self) -> list[nn.Parameter]:
        t = self.tower
        params = [*t.token_embedding.parameters(), t.positional_embedding, *t.transformer.parameters(),
                  *t.ln_final.parameters()]
        proj = getattr(t, "text_projection", None)
        if isinstance(proj, nn.Module):
            params += list(proj.parameters())
        elif proj is not None:
            params.append(proj)
        return params

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [N, L] -> token embeddings [N, L, W] (what a prompt learner starts from)."""
        return self.tower.token_embedding(token_ids)

    def pool_index(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Where the sentence feature is read, per row, following open_clip's pooling rule."""
        n, length = token_ids.shape
        if self.pool_type == "argmax":
            return token_ids.argmax(dim=-1)
        if self.pool_type == "eos":
            return (token_ids == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "last":
            return torch.full((n,), length - 1, dtype=torch.long, device=token_ids.device)
        if self.pool_type == "first":
            return torch.zeros(n, dtype=torch.long, device=token_ids.device)
        raise NumclipError(f"unsupported text pooling '{self.pool_type}' for prompt learning")

    def sequence_length(self, pool_index: torch.Tensor, length: int) -> int:
        """How many positions a pass must run: up to the last pooled one when the mask is causal (a
        bidirectional tower, or cropping switched off, runs all `length`)."""
        if not self.crop or self.attn_mask is None or pool_index.numel() == 0:
            return length
        return min(int(pool_index.max()) + 1, length)

    def encode(self, embeddings: torch.Tensor, pool_index: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings [N, L, W] -> text features [N, D] (unnormalised, like encode_text)."""
        t = self.tower
        cast_dtype = t.transformer.get_cast_dtype() if hasattr(t.transformer, "get_cast_dtype") \
            else embeddings.dtype
        n = self.sequence_length(pool_index, embeddings.shape[1])
        x = embeddings[:, :n].to(cast_dtype) + t.positional_embedding[:n].to(cast_dtype)
        x = t.transformer(x, attn_mask=None if self.attn_mask is None else self.attn_mask[:n, :n])
        x = t.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), pool_index]
        proj = getattr(t, "text_projection", None)
        if isinstance(proj, nn.Linear):
            x = proj(x)
        elif proj is not None:
            x = x @ proj
        return x


def encode_token_ids(clip_model: nn.Module, token_ids: torch.Tensor, crop: bool = True) -> torch.Tensor:
    """What `clip_model.encode_text(token_ids)` computes (unnormalised), cropped as the module says.
    Text towers the view cannot drive (CoCa's class token, a padding mask) go through encode_text."""
    try:
        tower = TextTower(clip_model)
    except NumclipError:
        return clip_model.encode_text(token_ids)
    if getattr(tower.tower, "use_pad_mask", False):
        return clip_model.encode_text(token_ids)
    tower.crop = crop
    return tower.encode(tower.embed(token_ids), tower.pool_index(token_ids))
