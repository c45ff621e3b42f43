"""One place that judges every candidate row, so no source can let a bad row through or drop one silently.

Each row either becomes a `ManifestRow` or a `Reject` carrying a short human reason; the two lists
together always account for every candidate. Checks run path first, then label, split and fold,
then the image itself.
"""

from __future__ import annotations

import decimal
import math
import numbers
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

from numclip.core.errors import NumclipError
from numclip.core.progress import progress
from numclip.core.text import printable
from numclip.data.images import ImageError, load_image
from numclip.data.manifest import SPLITS, Candidate, ManifestRow
from numclip.data.tables import Reject


class _Rejected(Exception):
    """Internal: carries a row's reason out of the nested checks."""


@dataclass
class _Context:
    root_abs: str
    root_real: str  # symlinks resolved: where a file really is must lie under this
    seen: dict[str, str]  # normalised path -> source_row of its first occurrence


_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+(?:\.0*)?")  # ASCII digits, maybe ".0": not 0_2, ٣, 1e0 or 0x1


def as_int(value: object) -> int | None:
    """3, 3.0, Decimal(3), "3", " 3.0 " -> 3; anything else (3.5, "abc", "0_2", NaN, inf, True) -> None.

    Text is read as plain decimal digits: Python's int() would also take "0_2" as 2 and other
    scripts' digits, which in a label column are typos, not ranks."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        return int(text.split(".")[0]) if _INTEGER_TEXT.fullmatch(text) else None
    if isinstance(value, (numbers.Real, decimal.Decimal)) and math.isfinite(value) and value == int(value):
        return int(value)
    return None


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _relative_path(raw: str, root_abs: str, root_real: str) -> str:
    """POSIX path relative to the images root (backslashes read as separators unless a file's name
    holds them)."""
    p = raw.strip()
    if not p:
        raise _Rejected("missing path")
    if "\0" in p:
        raise _Rejected("path holds a NUL byte")
    if "\\" in p and not os.path.lexists(os.path.join(root_abs, p)):
        p = p.replace("\\", "/")  # a table written on Windows; a Linux name may hold a backslash
    if printable(p) != p:  # a file name whose bytes are not UTF-8 (os.fsdecode's surrogates)
        raise _Rejected("path is not valid UTF-8; rename the file")
    if os.path.isabs(p):
        p = os.path.normpath(p)
        base = next((b for b in (root_abs, root_real) if _inside(p, b)), None)
        if base is None:
            raise _Rejected("path escapes the images root")
        p = os.path.relpath(p, base)
    rel = posixpath.normpath(Path(p).as_posix())
    if rel == ".." or rel.startswith("../"):
        raise _Rejected("path escapes the images root")
    return rel


def _image_problem(path: Path) -> str | None:
    """Why the image cannot be trained on, read exactly as training will read it (None: it can)."""
    try:
        load_image(path)
    except ImageError as e:
        if "cannot identify image file" in e.reason:
            return "unreadable image (not a format PIL can identify)"
        return "truncated image" if "truncated" in e.reason else f"unreadable image ({e.reason})"
    return None


def _check(c: Candidate, ctx: _Context, num_ranks: int, verify_images: bool) -> ManifestRow:
    rel = _relative_path(str(c.path or ""), ctx.root_abs, ctx.root_real)
    if rel in ctx.seen:
        raise _Rejected(f"duplicate path (first at {ctx.seen[rel]})")
    ctx.seen[rel] = c.source_row
    full = os.path.join(ctx.root_abs, rel)
    if not _inside(os.path.realpath(full), ctx.root_real):
        raise _Rejected("path escapes the images root (symlink)")
    if not os.path.exists(full):
        raise _Rejected("file not found")
    if not os.path.isfile(full):
        raise _Rejected("not a file")
    if _is_missing(c.label):
        raise _Rejected("missing label")
    label = as_int(c.label)
    if label is None:
        raise _Rejected(f"non-integer label '{c.label}'")
    if not 0 <= label < num_ranks:
        raise _Rejected(f"label {label} outside [0, {num_ranks})")
    split = "" if _is_missing(c.split) else str(c.split).strip().lower()
    if split and split not in SPLITS:
        raise _Rejected(f"split '{c.split}' not in {'/'.join(SPLITS)}")
    fold = None if _is_missing(c.fold) else as_int(c.fold)
    if fold is None and not _is_missing(c.fold):
        raise _Rejected(f"non-integer fold '{c.fold}'")
    if verify_images:
        problem = _image_problem(Path(full))
        if problem:
            raise _Rejected(problem)
    return ManifestRow(path=rel, label=label, split=split, caption=c.caption, group=c.group,
                       fold=fold, source_row=c.source_row)


def validate(candidates: list[Candidate], images_root: str | os.PathLike, num_ranks: int,
             verify_images: bool = True) -> tuple[list[ManifestRow], list[Reject]]:
    """Split candidates into valid rows (split "" where the source gave none) and rejects."""
    root = Path(images_root)
    if not root.is_dir():
        raise NumclipError(f"images root {root} is not a folder (set data.images_root to the folder "
                           "that image paths are relative to)")
    ctx = _Context(os.path.abspath(root), os.path.realpath(root), {})
    rows, rejects = [], []
    for c in progress(candidates, f"checking {len(candidates)} rows" + (" and images" if verify_images else "")):
        try:
            rows.append(_check(c, ctx, num_ranks, verify_images))
        except _Rejected as r:
            label = "" if c.label is None else str(c.label)
            rejects.append(Reject(source_row=printable(c.source_row), path=printable(str(c.path or "")),
                                  label=printable(label), reason=str(r)))
    return rows, rejects
