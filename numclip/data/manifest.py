"""The one manifest format every dataset is ingested into, so later stages read a single schema.

A manifest is a Parquet file of rows (image path, rank label, split, optional caption/group/fold and
the source row it came from) plus two schema metadata keys: where the images live (relative to the
manifest, so a project can be moved) and K, the number of ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from numclip.config import Params
from numclip.core.atomic import atomic_path
from numclip.core.errors import NumclipError
from numclip.core.text import one_line

SPLITS = ("train", "val", "test")
META_IMAGES_ROOT = "numclip.images_root"
META_NUM_RANKS = "numclip.num_ranks"

SCHEMA = pa.schema([
    pa.field("path", pa.string(), nullable=False),
    pa.field("label", pa.int64(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("caption", pa.string()),
    pa.field("group", pa.string()),
    pa.field("fold", pa.int64()),
    pa.field("source_row", pa.string(), nullable=False),
])


@dataclass
class Candidate:
    """A raw row as a source reader found it, before validation: `label` and `fold` are as read."""

    path: str
    label: object
    split: str | None
    caption: str | None = None
    group: str | None = None
    fold: object = None
    source_row: str = ""


@dataclass(frozen=True)
class ManifestRow:
    """A validated row: `path` is POSIX and relative to the images root; `label` is a rank 0..K-1.

    `split` is "" between validation and `assign_splits` for sources that give no split.
    """

    path: str
    label: int
    split: str
    caption: str | None = None
    group: str | None = None
    fold: int | None = None
    source_row: str = ""


@dataclass
class Manifest:
    rows: list[ManifestRow]
    images_root: Path
    num_ranks: int

    def split(self, name: str) -> list[ManifestRow]:
        if name not in SPLITS:
            raise NumclipError(f"unknown split '{name}': use one of {', '.join(SPLITS)}")
        return [r for r in self.rows if r.split == name]

    def abs_path(self, row: ManifestRow) -> Path:
        return self.images_root / row.path

    def counts(self) -> dict[str, int]:
        """Rows per split, every split named (zero included)."""
        out = dict.fromkeys(SPLITS, 0)
        for r in self.rows:
            out[r.split] = out.get(r.split, 0) + 1
        return out


def write_manifest(manifest: Manifest, path: str | os.PathLike) -> None:
    """Write atomically; the images root is stored relative to the manifest's directory."""
    path = Path(path)
    for r in manifest.rows:
        if r.split not in SPLITS:
            raise NumclipError(f"manifest row {r.source_row or r.path} has split '{r.split}', "
                               f"not one of {', '.join(SPLITS)}")
    root_rel = os.path.relpath(Path(manifest.images_root).resolve(), path.resolve().parent)
    schema = SCHEMA.with_metadata({META_IMAGES_ROOT: Path(root_rel).as_posix(),
                                   META_NUM_RANKS: str(manifest.num_ranks)})
    columns = {name: [getattr(r, name) for r in manifest.rows] for name in SCHEMA.names}
    table = pa.Table.from_pydict(columns, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read and check a manifest; the images root comes back absolute."""
    path = Path(path)
    if not path.is_file():
        raise NumclipError(f"manifest not found: {path} (run the ingest stage first)")
    try:
        table = pq.read_table(path)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
        raise NumclipError(f"manifest {path} is not a readable Parquet file: {one_line(e, 300)}") from None
    missing = [c for c in SCHEMA.names if c not in table.column_names]
    if missing:
        raise NumclipError(f"manifest {path} lacks columns {', '.join(missing)} "
                           f"(it has {', '.join(table.column_names)})")
    absent = [k for k in (META_IMAGES_ROOT, META_NUM_RANKS) if k not in meta]
    if absent:
        raise NumclipError(f"manifest {path} lacks schema metadata {', '.join(absent)} "
                           "(write it with numclip's ingest stage)")
    try:
        num_ranks = int(meta[META_NUM_RANKS])
    except ValueError:
        raise NumclipError(f"manifest {path}: metadata {META_NUM_RANKS} is "
                           f"'{meta[META_NUM_RANKS]}', not an integer") from None
    images_root = (path.resolve().parent / meta[META_IMAGES_ROOT]).resolve()
    cols = {c: table.column(c).to_pylist() for c in SCHEMA.names}
    rows = [ManifestRow(**dict(zip(SCHEMA.names, values))) for values in zip(*cols.values())]
    for i, r in enumerate(rows):
        if not isinstance(r.path, str) or not isinstance(r.label, int) or not 0 <= r.label < num_ranks \
                or r.split not in SPLITS:
            raise NumclipError(f"manifest {path} row {i}: path {r.path!r}, label {r.label!r}, "
                               f"split {r.split!r} (need a path, a label in [0, {num_ranks}) "
                               f"and a split in {', '.join(SPLITS)})")
    return Manifest(rows=rows, images_root=images_root, num_ranks=num_ranks)


def load_checked_manifest(params: Params) -> Manifest:
    manifest = read_manifest(params.data.manifest)
    if manifest.num_ranks != params.data.num_ranks:
        raise NumclipError(f"{params.data.manifest} was written for {manifest.num_ranks} ranks but "
                           f"data.num_ranks is {params.data.num_ranks}: re-run `numclip ingest`")
    return manifest
