"""The CLIP text transformer driven by token *embeddings*, so prompts can hold learnable vectors.

The feature is read at the pooling position CLIP uses (the EOT token for OpenAI-style towers),
found from the pseudo-sentence's token ids exactly as open_clip's `text_global_pool` does.
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

    @property
    def width(self) -> int:
        return int(self.tower.token_embedding.weight.shape[1])

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

    def encode(self, embeddings: torch.Tensor, pool_index: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings [N, L, W] -> text features [N, D] (unnormalised, like encode_text)."""
        t = self.tower
        cast_dtype = t.transformer.get_cast_dtype() if hasattr(t.transformer, "get_cast_dtype") \
            else embeddings.dtype
        x = embeddings.to(cast_dtype) + t.positional_embedding.to(cast_dtype)
        x = t.transformer(x, attn_mask=self.attn_mask)
        x = t.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), pool_index]
        proj = getattr(t, "text_projection", None)
        if isinstance(proj, nn.Linear):
            x = proj(x)
        elif proj is not None:
            x = x @ proj
        return x
