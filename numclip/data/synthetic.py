"""The embedded counting dataset, so the whole pipeline runs (and is tested) with no download.

Each image shows 1..K objects of one shape and one colour on a plain grey background; the label is
the count minus one and the caption names the count ("a photo of four red circles"). Objects never
overlap, so the count is visible and checkable. Everything is drawn from one seeded generator.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from numclip.config import NUMBER_WORDS, SyntheticConfig
from numclip.core.atomic import atomic_path
from numclip.core.errors import NumclipError
from numclip.data.manifest import Candidate

COLOURS = {"red": (220, 45, 45), "green": (40, 170, 60), "blue": (45, 90, 225),
           "yellow": (240, 220, 40), "purple": (150, 60, 190), "orange": (245, 140, 30),
           "white": (245, 245, 245)}
# Bounding-circle radius per unit of object width (circle: diameter; square, triangle: side).
CIRCUMRADIUS = {"circle": 0.5, "square": math.sqrt(0.5), "triangle": 1 / math.sqrt(3)}
SUPERSAMPLE = 4          # draw at 4x and box-filter down: exact coverage antialiasing, no ringing
MIN_CONTRAST = 90        # max channel difference between object colour and background
MIN_WIDTH_PX = 3.0       # smaller objects would not survive downsampling as visible blobs
NOISE_STD = 3.0
TRIES_PER_OBJECT = 200
SHRINK_STEPS = 12


def number_word(n: int) -> str:
    return NUMBER_WORDS[n - 1] if 1 <= n <= len(NUMBER_WORDS) else str(n)


def make_caption(count: int, colour: str, shape: str) -> str:
    return f"a photo of {number_word(count)} {colour} {shape}{'' if count == 1 else 's'}"


def margin_px(side: int) -> float:
    """Gap kept between bounding circles, in final-image pixels (objects also stay 1 px off the border)."""
    return max(2.0, 0.03 * side)


def place_objects(rng: np.random.Generator, count: int, side: int, shape: str,
                  cfg: SyntheticConfig) -> list[tuple[float, float, float]]:
    """(cx, cy, width) in pixels for `count` objects whose bounding circles keep a margin apart.

    Widths are drawn between min/max_size_fraction of the side; when rejection sampling fails, all
    widths shrink by 15% and placement restarts, so crowded settings degrade to smaller objects.
    """
    margin = margin_px(side)
    scale = 1.0
    for _ in range(SHRINK_STEPS):
        widths = rng.uniform(cfg.min_size_fraction, cfg.max_size_fraction, count) * side * scale
        widths = np.sort(np.maximum(widths, MIN_WIDTH_PX))[::-1]  # largest first packs best
        placed = _try_place(rng, widths * CIRCUMRADIUS[shape], side, margin)
        if placed is not None:
            return [(x, y, float(w)) for (x, y, _), w in zip(placed, widths)]
        scale *= 0.85
    raise NumclipError(
        f"synthetic: cannot place {count} non-overlapping objects in {side}x{side} images; raise "
        "data.synthetic.image_size, lower data.synthetic.max_size_fraction or data.num_ranks")


def _try_place(rng: np.random.Generator, radii: np.ndarray, side: int,
               margin: float) -> list[tuple[float, float, float]] | None:
    placed: list[tuple[float, float, float]] = []  # (x, y, radius)
    for r in radii.tolist():
        lo, hi = r + 1.0, side - r - 1.0
        if lo >= hi:
            return None
        for x, y in rng.uniform(lo, hi, (TRIES_PER_OBJECT, 2)).tolist():
            if all((x - px) ** 2 + (y - py) ** 2 >= (pr + r + margin) ** 2 for px, py, pr in placed):
                placed.append((x, y, r))
                break
        else:
            return None
    return placed


def _background(rng: np.random.Generator, colour: tuple[int, int, int]) -> int:
    """A light or dark grey level, flipped to the other shade if it would hide the colour."""
    light = bool(rng.random() < 0.5)
    levels = {True: int(rng.integers(170, 216)), False: int(rng.integers(35, 81))}
    grey = levels[light]
    if max(abs(c - grey) for c in colour) < MIN_CONTRAST:
        grey = levels[not light]
    return grey


def _polygon(shape: str, cx: float, cy: float, width: float, angle: float) -> list[tuple[float, float]]:
    n = 4 if shape == "square" else 3
    r = width * CIRCUMRADIUS[shape]
    return [(cx + r * math.cos(angle + 2 * math.pi * k / n), cy + r * math.sin(angle + 2 * math.pi * k / n))
            for k in range(n)]


def draw_image(rng: np.random.Generator, count: int, shape: str, colour: str,
               cfg: SyntheticConfig) -> Image.Image:
    side = cfg.image_size
    rgb = COLOURS[colour]
    grey = _background(rng, rgb)
    big = Image.new("RGB", (side * SUPERSAMPLE, side * SUPERSAMPLE), (grey, grey, grey))
    draw = ImageDraw.Draw(big)
    s = SUPERSAMPLE
    for cx, cy, w in place_objects(rng, count, side, shape, cfg):
        if shape == "circle":
            draw.ellipse([(cx - w / 2) * s, (cy - w / 2) * s, (cx + w / 2) * s, (cy + w / 2) * s], fill=rgb)
        else:
            angle = float(rng.uniform(0, 2 * math.pi))
            draw.polygon([(x * s, y * s) for x, y in _polygon(shape, cx, cy, w, angle)], fill=rgb)
    small = np.asarray(big.resize((side, side), Image.Resampling.BOX), dtype=np.float32)
    noisy = small + NOISE_STD * rng.standard_normal(small.shape, dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")


def generate_synthetic(cfg: SyntheticConfig, num_ranks: int) -> list[Candidate]:
    """Write cfg.num_images PNGs to cfg.output_dir (stale PNGs removed first); same seed, same bytes."""
    if not cfg.shapes or not cfg.colours:
        raise NumclipError("data.synthetic.shapes and data.synthetic.colours need at least one entry each")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.png"):
        stale.unlink()
    rng = np.random.default_rng(cfg.seed)
    candidates = []
    for i in range(cfg.num_images):
        count = int(rng.integers(1, num_ranks + 1))
        shape = cfg.shapes[int(rng.integers(len(cfg.shapes)))]
        colour = cfg.colours[int(rng.integers(len(cfg.colours)))]
        image = draw_image(rng, count, shape, colour, cfg)
        name = f"img_{i:05d}.png"
        with atomic_path(out / name) as tmp:
            image.save(tmp, format="PNG")
        candidates.append(Candidate(path=name, label=count - 1, split=None,
                                    caption=make_caption(count, colour, shape),
                                    source_row=f"synthetic:{i}"))
    return candidates
