"""Data drops: new rows arriving in sub-folders of `data.incoming`, so a scheduled retraining picks them up.

Each drop is one folder: a *table drop* when it holds one table file (CSV/Parquet) at its top, whose
image paths are relative to the drop folder, otherwise a *folder drop* in `read_folder`'s layout.
Drops are read in name order. Their rows keep the drop as their images root until ingest merges the
roots, so each drop is validated (and split) on its own and cannot reach outside its folder.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from numclip.core.errors import NumclipError
from numclip.data.manifest import Candidate, ManifestRow
from numclip.data.sources import read_folder, read_table

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass
class Drop:
    """One drop's raw rows; `folder` (absolute) is the root their paths are relative to."""

    name: str
    folder: Path
    candidates: list[Candidate]


def _ignored(entry: Path) -> bool:
    """Dotfiles (.DS_Store, .gitkeep) and a README explaining the folder are not data."""
    return entry.name.startswith(".") or (entry.is_file() and entry.name.upper().startswith("README"))


def drop_folders(incoming: str | os.PathLike) -> list[Path]:
    """The drop folders in name order; none when the incoming folder is missing or empty.

    A file lying directly in the incoming folder is an error rather than skipped: it is most likely
    a drop copied one level too high, and ignoring it would lose its rows silently.
    """
    incoming = Path(incoming)
    if not incoming.exists():
        return []
    if not incoming.is_dir():
        raise NumclipError(f"data.incoming {incoming} is a file; it must be a folder of drops "
                           "(one sub-folder per drop)")
    folders = []
    for entry in sorted(incoming.iterdir(), key=lambda p: p.name):
        if _ignored(entry):
            continue
        if not entry.is_dir():
            raise NumclipError(f"{entry} lies directly in the incoming folder {incoming}: each drop must "
                               f"be its own folder, e.g. {incoming / 'my-drop' / entry.name}")
        folders.append(entry)
    return folders


def _tables(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in TABLE_SUFFIXES)


def read_drop(folder: str | os.PathLike) -> list[Candidate]:
    """A table drop's rows (source_row: file:line) or a folder drop's (source_row: the image's path)."""
    folder = Path(folder)
    tables = _tables(folder)
    if len(tables) > 1:
        raise NumclipError(f"drop {folder} has {len(tables)} table files at its top "
                           f"({', '.join(t.name for t in tables)}); a drop holds one table, "
                           "or none for the <label>/ folder layout")
    if tables:
        return read_table(tables[0])
    candidates = read_folder(folder)
    for c in candidates:
        c.source_row = f"{folder.as_posix()}/{c.source_row}"  # name the drop, not only the file in it
    return candidates


def read_drops(incoming: str | os.PathLike) -> list[Drop]:
    """Every drop in the incoming folder, in name order."""
    return [Drop(name=f.name, folder=f.resolve(), candidates=read_drop(f)) for f in drop_folders(incoming)]


def common_root(roots: list[Path]) -> Path:
    """The deepest folder holding every root: a manifest has one images root."""
    try:
        return Path(os.path.commonpath([os.fspath(r) for r in roots]))
    except ValueError:
        raise NumclipError("the images root and the drop folders have no common folder (different "
                           f"drives?): {', '.join(map(str, roots))}") from None


def rebase(rows: list[ManifestRow], root: Path, common: Path) -> list[ManifestRow]:
    """Rows with paths relative to `common` instead of their own `root` (a POSIX prefix)."""
    prefix = Path(os.path.relpath(root, common)).as_posix()
    if prefix == ".":
        return list(rows)
    return [dataclasses.replace(r, path=f"{prefix}/{r.path}") for r in rows]
