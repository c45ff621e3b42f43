"""Batches with a fixed share of counting samples, so L_count sees counting captions in every batch.

Counting captions are rare in web data; drawn at their natural rate most batches would hold none and
L_count would barely train. The paper mixes them in at a fixed ratio instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from numclip.core.errors import NumclipError


class _Pool:
    """Indices handed out without replacement in a random order, reshuffled and restarted when used up.

    The position carries over between epochs, so a large pool is walked through evenly over epochs
    instead of restarting (and re-favouring an arbitrary first part) every epoch.
    """

    def __init__(self, indices: list[int], generator: torch.Generator):
        self.indices = torch.tensor(indices, dtype=torch.long)
        self.generator = generator
        self.order = self.indices[:0]
        self.position = 0

    def take(self, k: int) -> torch.Tensor:
        parts = []
        while k > 0:
            if self.position == len(self.order):
                self.order = self.indices[torch.randperm(len(self.indices), generator=self.generator)]
                self.position = 0
            step = min(k, len(self.order) - self.position)
            parts.append(self.order[self.position:self.position + step])
            self.position += step
            k -= step
        return torch.cat(parts) if parts else self.indices[:0]


class CountingBatchSampler(Sampler[list[int]]):
    """Index batches holding `round(fraction * batch_size)` counting samples and the rest non-counting.

    For a DataLoader's `batch_sampler`. An epoch has `len(is_counting) // batch_size` batches
    (`drop_last`) or the ceiling of that, the last batch then smaller with the same rounding of the
    fraction (Python's `round`, halves to even). Each pool is drawn without replacement in a seeded
    random order; a pool that runs out is reshuffled and drawing goes on, so a pool rarer than its share
    repeats within an epoch (the usual ratio sampling) and the other is not all seen every epoch. A
    repeat can land twice in one batch when the pool is smaller than its per-batch share or reshuffles
    mid-batch. Each batch is shuffled so the counting samples are not always first. The generator is
    seeded once here and advanced by each `__iter__`: epochs differ, and the run is reproducible.
    """

    def __init__(self, is_counting: Sequence[bool], batch_size: int, fraction: float, seed: int,
                 drop_last: bool = True):
        _check(is_counting, batch_size, fraction)
        self.batch_size, self.fraction, self.drop_last = batch_size, fraction, drop_last
        self.num_samples = len(is_counting)
        self.generator = torch.Generator().manual_seed(seed)
        flags = [bool(f) for f in is_counting]
        self.counting = _Pool([i for i, f in enumerate(flags) if f], self.generator)
        self.non_counting = _Pool([i for i, f in enumerate(flags) if not f], self.generator)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def batch_sizes(self) -> list[int]:
        """The size of every batch of an epoch, in order."""
        sizes = [self.batch_size] * (self.num_samples // self.batch_size)
        rest = self.num_samples % self.batch_size
        return sizes + [rest] if rest and not self.drop_last else sizes

    def counting_per_batch(self, size: int) -> int:
        """How many counting samples a batch of `size` holds."""
        return round(self.fraction * size)

    def __iter__(self) -> Iterator[list[int]]:
        # The whole epoch is drawn up front, so an epoch left early still advances the state the same.
        return iter([self._batch(size) for size in self.batch_sizes()])

    def _batch(self, size: int) -> list[int]:
        k = self.counting_per_batch(size)
        batch = torch.cat([self.counting.take(k), self.non_counting.take(size - k)])
        return batch[torch.randperm(size, generator=self.generator)].tolist()


def _check(is_counting: Sequence[bool], batch_size: int, fraction: float) -> None:
    if batch_size < 1:
        raise NumclipError(f"CountingBatchSampler: batch_size must be >= 1, got {batch_size}")
    if not 0.0 <= fraction <= 1.0:
        raise NumclipError(f"CountingBatchSampler: fraction must be in [0, 1], got {fraction}")
    num_counting = sum(bool(f) for f in is_counting)
    if fraction > 0 and num_counting == 0:
        raise NumclipError(f"CountingBatchSampler: fraction={fraction} asks for counting samples, but none "
                           f"of the {len(is_counting)} samples is counting")
    if fraction < 1 and num_counting == len(is_counting):
        raise NumclipError(f"CountingBatchSampler: fraction={fraction} asks for non-counting samples, but all "
                           f"{len(is_counting)} samples are counting")
