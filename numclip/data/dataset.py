"""Images and rank labels of one manifest split as a torch Dataset, for training and evaluation."""

from __future__ import annotations

from typing import Callable, Hashable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from numclip.core.errors import NumclipError
from numclip.data.images import load_image
from numclip.data.manifest import Manifest


def to_tensor(image: Image.Image) -> torch.Tensor:
    """HWC uint8 -> CHW float in [0, 1]: the default when no transform is given."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255)


class TensorCache:
    """Transformed images kept in memory up to a byte budget (first come, first kept). A deterministic
    transform of the same file gives the same tensor every epoch, so decoding and resizing it again
    is wasted work; the cached tensor is the one the transform returned, so results do not change."""

    def __init__(self, budget_bytes: int = 0) -> None:
        self.budget, self.used, self.items = budget_bytes, 0, {}

    def get(self, key: Hashable, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        hit = self.items.get(key)
        if hit is not None:
            return hit
        value = make()
        size = value.element_size() * value.nelement()
        if self.used + size <= self.budget:
            self.items[key] = value
            self.used += size
        return value


class ImageRankDataset(Dataset):
    """(image tensor, label) pairs for the rows of one split; `.rows` are those ManifestRows.

    `cache_bytes` keeps transformed images in memory (TensorCache): only for a deterministic transform."""

    def __init__(self, manifest: Manifest, split: str,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None, cache_bytes: int = 0) -> None:
        self.rows = manifest.split(split)
        if not self.rows:
            counts = ", ".join(f"{s} {n}" for s, n in manifest.counts().items())
            raise NumclipError(f"manifest has no '{split}' rows ({counts})")
        self.manifest = manifest
        self.transform = transform or to_tensor
        self.cache = TensorCache(cache_bytes)

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, index: int) -> Image.Image:
        """The row's image before the transform (for augmentations that need the index)."""
        return load_image(self.manifest.abs_path(self.rows[index]))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.cache.get(index, lambda: self.transform(self.image(index))), self.rows[index].label
