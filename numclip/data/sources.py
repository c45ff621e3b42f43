"""Source readers: each turns one dataset layout into raw `Candidate` rows, validated later in one place.

Readers never judge a row (a bad label or a missing file is validation's job, which reports it);
they only fail on a file they cannot parse at all, naming the file and line.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from numclip.config import DataConfig
from numclip.core.errors import NumclipError
from numclip.core.text import one_line
from numclip.data.manifest import SPLITS, Candidate
from numclip.data.synthetic import generate_synthetic
from numclip.data.tables import read_csv_table, unique_columns

__all__ = ["Candidate", "read_table", "read_folder", "read_lines", "read_listfile", "read_source"]

REQUIRED_COLUMNS = ("path", "label")
# Every suffix an image may have anywhere in numclip (ingest, importers, predict, CountBench):
# what Pillow reads, in the order a lookup by stem tries them.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _clean(value: object) -> object:
    """Empty strings and NaN mean 'no value'; strings are stripped."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _text(value: object) -> str | None:
    value = _clean(value)
    return None if value is None else str(value)


def _candidate(get, source_row: str) -> Candidate:
    """Build a candidate from a column getter (name -> raw value or None)."""
    return Candidate(path=_text(get("path")) or "", label=_clean(get("label")),
                     split=_text(get("split")), caption=_text(get("caption")),
                     group=_text(get("group")), fold=_clean(get("fold")), source_row=source_row)


def _check_columns(path: Path, names: list[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise NumclipError(f"{path}: missing required column(s) {', '.join(missing)}; "
                           f"it has columns {', '.join(names) or '(none)'}")


def read_table(path: str | os.PathLike) -> list[Candidate]:
    """CSV (header row required) or Parquet (.parquet/.pq) with columns path,label[,split,caption,group,fold]."""
    path = Path(path)
    if not path.is_file():
        raise NumclipError(f"data table not found: {path}")
    if path.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet(path)
    return _read_csv(path)


def _read_csv(path: Path) -> list[Candidate]:
    names, rows = read_csv_table(path, "a header row with columns path,label")
    _check_columns(path, names)
    out = []
    for row in rows:
        if not row.fits(names):
            raise NumclipError(f"{row.source_row} has {row.width} fields but the header has "
                               f"{len(names)} (quote values that contain commas)")
        out.append(_candidate(row.values.get, row.source_row))
    return out


def _read_parquet(path: Path) -> list[Candidate]:
    try:
        names = unique_columns(path, pq.read_schema(path).names)
        table = pq.ParquetFile(path).read()
    except (pa.ArrowException, OSError) as e:
        raise NumclipError(f"{path} is not a readable Parquet file: {one_line(e, 300)}") from None
    _check_columns(path, names)
    columns = {name: table.column(i).to_pylist() for i, name in enumerate(names)}
    return [_candidate(lambda k: columns[k][i] if k in columns else None,  # noqa: B023 (called at once)
                       f"{path}:row {i + 1}")
            for i in range(table.num_rows)]


def _images_in(folder: Path) -> list[Path]:
    """Every entry named like an image that is not a folder: a pipe, a socket or a broken link named
    x.png becomes a candidate too, so validation rejects it with its reason instead of its vanishing."""
    return sorted(p for p in folder.iterdir()
                  if not p.is_dir() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_folder(root: str | os.PathLike) -> list[Candidate]:
    """`root/<label>/*` or, when every sub-folder is a split name, `root/<split>/<label>/*`.

    Images lying one level too high (no label folder) become candidates without a label, so
    validation reports them instead of their vanishing.
    """
    root = Path(root)
    if not root.is_dir():
        raise NumclipError(f"image folder not found: {root}")
    top = _subdirs(root)
    split_layout = bool(top) and all(d.name in SPLITS for d in top)
    out = []

    def add(folder: Path, label: str | None, split: str | None) -> None:
        for f in _images_in(folder):
            rel = f.relative_to(root).as_posix()
            out.append(Candidate(path=rel, label=label, split=split, source_row=rel))

    if split_layout:
        add(root, None, None)
    for split_dir, split in ([(d, d.name) for d in top] if split_layout else [(root, None)]):
        add(split_dir, None, split)
        for label_dir in _subdirs(split_dir):
            add(label_dir, label_dir.name, split)
    return out


def read_lines(path: Path, comments: bool = True) -> list[tuple[str, str]]:
    """(`file:line`, text) for each non-blank line (and, with `comments`, not a `#` comment): list
    files of every layout, read one way, so every reject can name its line."""
    if not path.is_file():
        raise NumclipError(f"list file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise NumclipError(f"{path} is not UTF-8 text: {e}") from None
    return [(f"{path}:{n}", text) for n, text in enumerate(lines, start=1)
            if text.strip() and not (comments and text.lstrip().startswith("#"))]


def read_listfile(path: str | os.PathLike, split: str | None = None) -> list[Candidate]:
    """OrdinalCLIP lists: `relative/path.jpg <rank> [<more labels>…]` per line; `#` comments allowed."""
    out = []
    for where, line in read_lines(Path(path)):
        parts = line.split()
        out.append(Candidate(path=parts[0], label=parts[1] if len(parts) > 1 else None,
                             split=split, source_row=where))
    return out


def read_source(cfg: DataConfig) -> tuple[list[Candidate], Path]:
    """Candidates from `cfg.source` and the (absolute) images root their paths are relative to."""
    if cfg.source == "synthetic":
        # The images are written to output_dir, so that is their root whatever data.images_root says.
        return generate_synthetic(cfg.synthetic, cfg.num_ranks), Path(cfg.synthetic.output_dir).resolve()
    if cfg.split_paths and cfg.source == "folder":
        raise NumclipError("data.split_paths applies to table and listfile sources; for a folder "
                           "source use the root/<split>/<label>/ layout with data.path")
    if cfg.split_paths and cfg.path:
        raise NumclipError("give data.path or data.split_paths, not both")
    if not cfg.split_paths and not cfg.path:
        raise NumclipError(f"data.path is required for data.source '{cfg.source}'")
    if cfg.source == "folder":
        candidates, default_root = read_folder(cfg.path), Path(cfg.path)
    else:
        files = cfg.split_paths or {None: cfg.path}
        candidates = []
        for split, file in files.items():
            rows = read_table(file) if cfg.source == "table" else read_listfile(file)
            for c in rows:
                c.split = split if split is not None else c.split
            candidates += rows
        dirs = {Path(f).resolve().parent for f in files.values()}
        if len(dirs) > 1 and cfg.images_root is None:
            raise NumclipError("data.split_paths files lie in different folders; set data.images_root "
                               "to the folder their image paths are relative to")
        default_root = dirs.pop()
    root = Path(cfg.images_root) if cfg.images_root is not None else default_root
    return candidates, root.resolve()
