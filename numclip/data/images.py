"""The one image loader (ingest's check, training, evaluation, predict, CountBench): 8-bit RGB,
upright, with high-bit-depth pixels scaled rather than clipped, and nothing but regular files opened,
so a pipe or a device named like an image can never block a run."""

from __future__ import annotations

import os
import stat

import numpy as np
from PIL import Image, ImageOps

from numclip.core.errors import NumclipError

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")  # single-channel 16-bit (PNG, TIFF)


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB. Pillow's convert("RGB") clips 16-bit and float pixels at 255 (a 16-bit image turns
    white), so those are scaled first: 16 bits keep their high byte, as Pillow does for 16-bit RGB
    PNGs, and floats in [0, 1] are multiplied by 255. What cannot be scaled without guessing is refused."""
    mode = im.mode
    if mode == "I" and im.format == "PNG":  # how some Pillow versions open 16-bit greyscale PNGs
        mode = "I;16"
    if mode in SIXTEEN_BIT_MODES:
        pixels = np.asarray(im).astype(np.uint32)
        return Image.fromarray((np.clip(pixels, 0, 65535) >> 8).astype(np.uint8), "L").convert("RGB")
    if mode == "I":
        raise ValueError("32-bit integer pixels; save the image with 8 or 16 bits per channel")
    if mode == "F":
        pixels = np.asarray(im, dtype=np.float64)
        if not (np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 1):
            raise ValueError("floating-point pixels outside [0, 1]; save the image with 8 or 16 bits per channel")
        return Image.fromarray(np.rint(pixels * 255).astype(np.uint8), "L").convert("RGB")
    if mode == "LAB":
        raise ValueError("LAB colour; convert the image to RGB")
    return im.convert("RGB")


class ImageError(NumclipError):
    """An image that cannot be read; `reason` says why, without the path (ingest's reject reason)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.reason = reason


def load_image(path: str | os.PathLike) -> Image.Image:
    """An 8-bit RGB image, upright per its EXIF orientation; ImageError naming the path (and why)
    when it is not a regular file or cannot be read as an image."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ImageError(path, "not a regular file")
    except ValueError:  # os.stat refuses a NUL byte
        raise ImageError(repr(path), "the path holds a NUL byte") from None
    except OSError as e:
        raise ImageError(path, str(e.strerror or e)) from None
    try:
        with Image.open(path) as im:
            return _to_rgb(ImageOps.exif_transpose(im))
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise ImageError(path, str(e)) from None
