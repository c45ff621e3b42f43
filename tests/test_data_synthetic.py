"""The embedded counting dataset: determinism, true counts (no overlaps), true captions."""

import itertools
import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from numclip.config import SyntheticConfig
from numclip.core.errors import NumclipError
from numclip.data.synthetic import CIRCUMRADIUS, COLOURS, generate_synthetic, make_caption, margin_px, place_objects


def _generate(tmp_path, name, **kw):
    cfg = SyntheticConfig(output_dir=str(tmp_path / name), **kw)
    return cfg, generate_synthetic(cfg, num_ranks=10)


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    cfg_a, rows_a = _generate(tmp_path, "a", num_images=12, seed=3)
    cfg_b, rows_b = _generate(tmp_path, "b", num_images=12, seed=3)
    cfg_c, rows_c = _generate(tmp_path, "c", num_images=12, seed=4)
    assert [r.path for r in rows_a] == [f"img_{i:05d}.png" for i in range(12)]
    assert [(r.label, r.caption) for r in rows_a] == [(r.label, r.caption) for r in rows_b]
    for r in rows_a:
        a = (tmp_path / "a" / r.path).read_bytes()
        assert a == (tmp_path / "b" / r.path).read_bytes()
        assert a != (tmp_path / "c" / r.path).read_bytes()


def test_stale_images_removed_and_size(tmp_path):
    out = tmp_path / "syn"
    out.mkdir()
    (out / "img_99999.png").write_bytes(b"stale")
    (out / "keep.txt").write_text("not an image")
    cfg, rows = _generate(tmp_path, "syn", num_images=5, image_size=48)
    assert sorted(p.name for p in out.glob("*.png")) == [r.path for r in rows]
    assert (out / "keep.txt").exists()
    with Image.open(out / rows[0].path) as im:
        assert im.size == (48, 48) and im.mode == "RGB"


def test_counts_match_labels_and_captions(tmp_path):
    """Connected blobs of non-background pixels == label + 1: objects are visible and never touch."""
    cfg, rows = _generate(tmp_path, "syn", num_images=150, seed=1)
    assert {r.label for r in rows} == set(range(10))
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    for r in rows:
        px = np.asarray(Image.open(tmp_path / "syn" / r.path), dtype=np.int16)
        background = np.median(px.reshape(-1, 3), axis=0)
        mask = np.abs(px - background).max(axis=2) > 40
        _, blobs = ndimage.label(mask, structure=np.ones((3, 3)))  # 8-connected: touching would merge
        assert blobs == r.label + 1, (r.path, r.caption)
        a, photo, of, word, colour, shape = r.caption.split()
        assert (a, photo, of, word) == ("a", "photo", "of", words[r.label])
        assert shape.endswith("s") == (r.label > 0) and shape.rstrip("s") in cfg.shapes
        # all objects have the caption's colour
        object_px = px[ndimage.binary_erosion(mask)]
        if len(object_px):
            assert np.abs(object_px.mean(axis=0) - COLOURS[colour]).max() < 25, r.caption


def test_caption_grammar():
    assert make_caption(1, "red", "circle") == "a photo of one red circle"
    assert make_caption(4, "red", "circle") == "a photo of four red circles"
    assert make_caption(3, "blue", "square") == "a photo of three blue squares"
    assert make_caption(20, "green", "triangle") == "a photo of twenty green triangles"
    assert make_caption(21, "green", "triangle") == "a photo of 21 green triangles"


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
def test_ten_objects_always_fit_at_default_sizes(shape):
    """At defaults (64 px, K=10) placement never needs to shrink objects, and never overlaps."""
    cfg = SyntheticConfig()
    rng = np.random.default_rng(0)
    side, margin = 64, margin_px(64)
    for _ in range(300):
        objects = place_objects(rng, 10, side, shape, cfg)
        assert len(objects) == 10
        for x, y, w in objects:
            assert cfg.min_size_fraction * side - 1e-9 <= w <= cfg.max_size_fraction * side + 1e-9
            r = w * CIRCUMRADIUS[shape]
            assert r < x < side - r and r < y < side - r
        for (x1, y1, w1), (x2, y2, w2) in itertools.combinations(objects, 2):
            gap = math.dist((x1, y1), (x2, y2)) - (w1 + w2) * CIRCUMRADIUS[shape]
            assert gap >= margin - 1e-9


def test_crowded_images_shrink_objects_then_fail_clearly():
    cfg = SyntheticConfig(min_size_fraction=0.25, max_size_fraction=0.3)
    objects = place_objects(np.random.default_rng(0), 8, 64, "circle", cfg)
    assert len(objects) == 8 and min(w for _, _, w in objects) < 0.25 * 64  # shrunk to fit
    with pytest.raises(NumclipError, match="cannot place 60 non-overlapping objects in 16x16"):
        place_objects(np.random.default_rng(0), 60, 16, "circle", SyntheticConfig(image_size=16))
