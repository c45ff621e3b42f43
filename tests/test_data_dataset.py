"""The torch Dataset over a manifest split, and image loading errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from numclip.core.errors import NumclipError
from numclip.data import ImageRankDataset, load_image
from numclip.data.manifest import Manifest, ManifestRow
from numclip.data.order import SeededFlip


@pytest.fixture
def manifest(tmp_path):
    Image.new("RGB", (6, 4), (255, 0, 0)).save(tmp_path / "red.png", format="PNG")
    Image.new("L", (6, 4), 128).save(tmp_path / "grey.png", format="PNG")
    rows = [ManifestRow("red.png", 3, "train"), ManifestRow("grey.png", 1, "train"),
            ManifestRow("red.png", 0, "val")]
    return Manifest(rows=rows, images_root=tmp_path, num_ranks=5)


def test_items_are_tensors_and_labels(manifest):
    ds = ImageRankDataset(manifest, "train")
    assert len(ds) == 2 and ds.rows == manifest.rows[:2]
    x, y = ds[0]
    assert x.shape == (3, 4, 6) and x.dtype == torch.float32 and y == 3 and isinstance(y, int)
    assert torch.equal(x[0], torch.ones(4, 6)) and torch.equal(x[1], torch.zeros(4, 6))
    grey, label = ds[1]
    assert grey.shape == (3, 4, 6) and label == 1  # greyscale comes back as RGB
    assert torch.allclose(grey, torch.full((3, 4, 6), 128 / 255))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch[0].shape == (2, 3, 4, 6) and batch[1].tolist() == [3, 1]


def test_transform_is_applied(manifest):
    ds = ImageRankDataset(manifest, "val", transform=lambda im: torch.tensor(im.size))
    assert ds[0][0].tolist() == [6, 4] and ds[0][1] == 0


def test_empty_split_and_unreadable_image(manifest, tmp_path):
    with pytest.raises(NumclipError, match=r"no 'test' rows \(train 2, val 1, test 0\)"):
        ImageRankDataset(manifest, "test")
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(NumclipError, match="cannot read image .*bad.png"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(NumclipError, match="cannot read image .*missing.png"):
        load_image(tmp_path / "missing.png")


def test_the_cache_returns_what_the_transform_gave_within_its_budget(manifest):
    calls = []

    def transform(image):
        calls.append(image.size)
        return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.float32))

    uncached = ImageRankDataset(manifest, "train", transform)
    one_image = uncached[0][0].nelement() * 4
    cached = ImageRankDataset(manifest, "train", transform, cache_bytes=one_image)  # room for one image
    calls.clear()
    first = [cached[i][0] for i in (0, 1, 0, 1)]
    assert len(calls) == 3, "image 0 is kept, image 1 does not fit and is transformed each time"
    assert first[0] is first[2] and torch.equal(first[1], first[3])
    for i in (0, 1):
        assert torch.equal(cached[i][0], uncached[i][0]) and cached[i][1] == uncached[i][1]
    flips = SeededFlip(ImageRankDataset(manifest, "train", transform, cache_bytes=10 * one_image), seed=0)
    plain = SeededFlip(ImageRankDataset(manifest, "train", transform), seed=0)
    for epoch in range(4):  # both orientations are kept apart
        flips.epoch = plain.epoch = epoch
        for i in (0, 1):
            assert torch.equal(flips[i][0], plain[i][0])
