"""NumCLIP's coarse-to-fine pieces (docs/methods.md, NumCLIP): concept bins, the image adapter, the SSR regressor.

The K fine ranks are grouped into C bins, each named by a language concept ("a few", "teenager");
the image is matched to the concepts, then a small regressor reasons the fine number from the
concept logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from numclip.config import Params
from numclip.core.errors import NumclipError

PRESETS = {
    # counting 1..10 (label = count - 1): {1}, {2}, {3, 4}, {5, 6, 7}, {8, 9, 10}
    "counting": ([0, 1, 2, 4, 7], ["a single", "a couple of", "a few", "several", "many"]),
    # the released age bins, on y' = age - 1 with label_shift 1 as released
    "age": ([0, 13, 19, 35, 65], ["child", "teenager", "young adult", "middle adult", "older adult"]),
}


@dataclass(frozen=True)
class ConceptBins:
    """Bins of the fine label y' = label - label_shift: bin c holds edges[c] <= y' < edges[c + 1].

    Bins are contiguous by construction (lower edges only); the first starts at 0, and a y' below 0
    (only possible with a label shift) falls in it.
    """

    edges: tuple[int, ...]
    names: tuple[str, ...]
    num_ranks: int
    label_shift: int = 0

    def __post_init__(self) -> None:
        edges, k = list(self.edges), self.num_ranks
        where = "task.concepts"
        if len(edges) != len(self.names):
            raise NumclipError(f"{where}: {len(edges)} edges but {len(self.names)} names")
        if len(edges) < 2:
            raise NumclipError(f"{where}: at least 2 bins are needed, got {len(edges)}")
        if edges[0] != 0:
            raise NumclipError(f"{where}: the first edge must be 0, or the ranks below {edges[0]} "
                               f"would have no bin; got edges {edges}")
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise NumclipError(f"{where}: edges must be strictly increasing, got {edges}")
        if edges[-1] > k - 1 - self.label_shift:
            raise NumclipError(f"{where}: the last bin starts at {edges[-1]} but the largest fine label "
                               f"is {k - 1 - self.label_shift}: it would be empty")

    @classmethod
    def create(cls, preset: str | None, edges: list[int] | None, names: list[str] | None,
               num_ranks: int, rank_words: list[str], label_shift: int = 0) -> "ConceptBins":
        """A preset (counting, age), one bin per rank (levels), or explicit edges and names."""
        if edges is not None or names is not None:
            if edges is None or names is None:
                raise NumclipError("task.concepts: give both edges and names, or a preset")
        elif preset == "levels":
            edges, names = list(range(num_ranks)), list(rank_words)
        elif preset in PRESETS:
            edges, names = PRESETS[preset]
        else:
            raise NumclipError(f"task.concepts.preset: unknown preset '{preset}' "
                               f"(known: {', '.join([*PRESETS, 'levels'])})")
        return cls(tuple(edges), tuple(names), num_ranks, label_shift)

    @property
    def num_bins(self) -> int:
        return len(self.edges)

    def fine(self, labels: torch.Tensor) -> torch.Tensor:
        """The fine label y' = label - label_shift (float)."""
        return labels.float() - self.label_shift

    def coarse(self, labels: torch.Tensor) -> torch.Tensor:
        """Bin index of each fine label (every rank maps to exactly one bin)."""
        edges = torch.tensor(self.edges, device=labels.device, dtype=torch.float32)
        return (torch.bucketize(self.fine(labels), edges, right=True) - 1).clamp_min(0)

    def lower_edges(self) -> torch.Tensor:
        return torch.tensor(self.edges, dtype=torch.float32)

    def centres(self) -> torch.Tensor:
        upper = list(self.edges[1:]) + [self.num_ranks - self.label_shift]
        return torch.tensor([(a + b - 1) / 2 for a, b in zip(self.edges, upper)], dtype=torch.float32)


class ImageAdapter(nn.Module):
    """Residual adapter f -> normalize(α·A(f) + (1-α)·f), A = Linear(D, D/4) → ReLU → Linear(D/4, D) → ReLU.

    The width comes from the backbone (the released code hard-codes 512, so RN50 and ViT-L crash).
    """

    def __init__(self, width: int, alpha: float = 0.8):
        super().__init__()
        self.alpha = alpha
        self.net = nn.Sequential(nn.Linear(width, max(width // 4, 1), bias=False), nn.ReLU(),
                                 nn.Linear(max(width // 4, 1), width, bias=False), nn.ReLU())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.alpha * self.net(features) + (1 - self.alpha) * features, dim=-1)


class SSRRegressor(nn.Module):
    """Fine stage: y = Σ_k p_k · b_k / (1 + λ·Δ_k), p = softmax(L), Δ = tanh(MLP(L)) (docs/methods.md, Fine stage).

    `anchors` b_k are the bins' lower edges (released) or their centres. `use_shift=False` gives the
    plain expectation Σ_k p_k · b_k (no learned correction).
    """

    def __init__(self, anchors: torch.Tensor, lam: float = 1.0, use_shift: bool = True):
        super().__init__()
        c = anchors.numel()
        self.register_buffer("anchors", anchors.float())
        self.lam, self.use_shift = lam, use_shift
        self.hidden = nn.Linear(c, 2 * c)
        self.shift = nn.Linear(2 * c, c)
        for layer in (self.hidden, self.shift):
            nn.init.normal_(layer.weight, std=0.001)
            nn.init.zeros_(layer.bias)

    def forward(self, concept_logits: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(concept_logits, dim=-1)
        if not self.use_shift:
            return (p * self.anchors).sum(dim=-1)
        delta = torch.tanh(self.shift(F.relu(self.hidden(concept_logits))))
        return (p * self.anchors / (1 + self.lam * delta)).sum(dim=-1)


def concept_bins(params: Params) -> ConceptBins:
    """NumCLIP's concept bins for this task (task.concepts)."""
    c = params.task.concepts
    return ConceptBins.create(params.task.concept_preset, c.edges, c.names, params.data.num_ranks,
                              params.rank_words(), c.label_shift)
