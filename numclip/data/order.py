"""What each training step sees, as a pure function of (seed, epoch, step): the epoch's global order,
each rank's share of a global batch, and the flip of each image.

Nothing depends on a generator's running state, so a run resumed at step s sees exactly what the
uninterrupted run saw from step s on, and W processes with batch B/W each see together what one
process with batch B sees.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import ImageOps
from torch.utils.data import Dataset, Sampler

from numclip.data.dataset import ImageRankDataset


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))


def epoch_order(n: int, seed: int, epoch: int, weights: Optional[torch.Tensor] = None) -> list[int]:
    """A permutation of range(n) for this epoch; with `weights`, n draws with replacement
    (class-balanced sampling)."""
    g = _generator(seed, epoch)
    if weights is None:
        return torch.randperm(n, generator=g).tolist()
    return torch.multinomial(weights, n, replacement=True, generator=g).tolist()


class ShardedBatches(Sampler[list[int]]):
    """This rank's part of global batches start_step..steps-1 of one epoch's order.

    Global batch k is order[k*B:(k+1)*B]; rank r of W takes every W-th item of it from the r-th, so
    the ranks' parts together are exactly the one-process batch.
    """

    def __init__(self, order: Sequence[int], batch_size: int, steps: int, rank: int = 0,
                 world_size: int = 1, start_step: int = 0):
        self.order, self.batch_size, self.steps = order, batch_size, steps
        self.rank, self.world_size, self.start_step = rank, world_size, start_step

    def __len__(self) -> int:
        return max(self.steps - self.start_step, 0)

    def __iter__(self) -> Iterator[list[int]]:
        for k in range(self.start_step, self.steps):
            batch = self.order[k * self.batch_size:(k + 1) * self.batch_size]
            yield list(batch[self.rank::self.world_size])


class SeededFlip(Dataset):
    """The training images, each mirrored or not by a coin seeded with (seed, epoch, index): the
    augmentation is the same whichever process or resumed run loads the image."""

    def __init__(self, base: ImageRankDataset, seed: int, enabled: bool = True):
        self.base, self.seed, self.enabled, self.epoch = base, seed, enabled, 0

    def __len__(self) -> int:
        return len(self.base)

    def flips(self, index: int) -> bool:
        return self.enabled and bool(np.random.default_rng([self.seed, self.epoch, index]).random() < 0.5)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        flipped = self.flips(index)

        def make() -> torch.Tensor:
            image = self.base.image(index)
            return self.base.transform(ImageOps.mirror(image) if flipped else image)

        return self.base.cache.get((index, flipped), make), self.base.rows[index].label
