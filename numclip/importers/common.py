"""Shared machinery of the dataset importers: reading list files, finding images, collecting rows and rejects.

Every data line an importer reads ends as exactly one table row or one reject (`source_row` = file:line
and a reason): nothing is dropped silently, so `rows + rejects` always equals the lines read. A broken
input *structure* (a missing list file, a CSV without its header) is a `NumclipError` naming the file.

The table written is numclip's `table` source (`path,label,split,fold,group,caption`, paths relative to
the dataset root, which becomes `data.images_root`); the rejects go to `<out stem>.rejects.csv` beside it.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
import statistics
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

from numclip.core.atomic import write_csv
from numclip.core.errors import NumclipError
from numclip.data.sources import IMAGE_EXTENSIONS
from numclip.data.tables import CsvRow, Reject, write_rejects

TABLE_COLUMNS = ("path", "label", "split", "fold", "group", "caption")
SPLIT_ALIASES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


class Bad(Exception):
    """One line's reason for rejection; `path` is the image path as the line gave it (may be empty)."""

    def __init__(self, reason: str, path: str = ""):
        super().__init__(reason)
        self.path = path


# --------------------------------------------------------------------------------------------- report
@dataclass
class ImportReport:
    """What an importer wrote, and the params overrides that make numclip read it."""

    dataset: str
    num_ranks: int
    rows: int
    rejects: int
    folds: list[int]
    out: Path
    images_root: Path
    rejects_out: Path
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # rows per "fold/split" (or "all")
    first_rejects: list[str] = field(default_factory=list)

    def params(self) -> dict[str, object]:
        """The `params.yaml` overrides (dotted keys) that point numclip's `table` source at this import."""
        return {"data.source": "table", "data.path": str(self.out),
                "data.images_root": str(self.images_root), "data.num_ranks": self.num_ranks}

    def summary(self) -> str:
        folds = f"folds {', '.join(map(str, self.folds))}" if self.folds else "no folds"
        lines = [f"{self.dataset}: {self.rows} rows, {self.rejects} rejects, K = {self.num_ranks}, {folds}",
                 f"  table:   {self.out}", f"  rejects: {self.rejects_out}"]
        if self.counts:
            lines.append("  rows: " + ", ".join(f"{k} {v}" for k, v in self.counts.items()))
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  reject: {r}" for r in self.first_rejects]
        if self.rejects > len(self.first_rejects):
            lines.append(f"  ... {self.rejects - len(self.first_rejects)} more in {self.rejects_out}")
        lines.append("  params: " + " ".join(f"{k}={v}" for k, v in self.params().items()))
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ collector
@dataclass
class Row:
    path: str
    label: int
    split: str = ""
    fold: int | None = None
    group: str = ""
    source_row: str = ""


class Collector:
    """Gathers one importer's rows and rejects; checks the label range and duplicate images per fold."""

    def __init__(self, dataset: str, root: Path, num_ranks: int):
        self.dataset, self.root, self.num_ranks = dataset, root, num_ranks
        self.rows: list[Row] = []
        self.rejects: list[Reject] = []
        self.notes: list[str] = []
        self._seen: dict[tuple[int | None, str], str] = {}
        self._dropped, self._dropped_example = 0, ""

    @contextmanager
    def line(self, source_row: str, path: str = "") -> Iterator[None]:
        """Run one line's parsing; a `Bad` raised inside becomes this line's reject."""
        try:
            yield
        except Bad as e:
            self.reject(source_row, str(e), e.path or path)

    def find(self, raw: str, prefixes: Sequence[str] = ("",), add_extension: bool = False) -> str:
        """`locate` under this root, noting (once, with an example) that lists needed folders dropped."""
        rel, dropped = _locate(self.root, raw, prefixes, add_extension)
        if dropped:
            if not self._dropped:
                self._dropped_example = f"{raw.strip()} -> {rel}"
            self._dropped += 1
        return rel

    def reject(self, source_row: str, reason: str, path: str = "") -> None:
        self.rejects.append(Reject(source_row, path, "", reason))

    def add(self, source_row: str, path: str, label: int, split: str = "", fold: int | None = None,
            group: str = "") -> Row:
        """Append a row; a label outside [0, K) or an image already taken in this fold raises `Bad`."""
        if not 0 <= label < self.num_ranks:
            raise Bad(f"label {label} outside [0, {self.num_ranks})", path)
        key = (fold, path)
        if key in self._seen:
            where = "" if fold is None else f" in fold {fold}"
            raise Bad(f"duplicate image{where} (first at {self._seen[key]})", path)
        self._seen[key] = source_row
        row = Row(path, label, split, fold, group, source_row)
        self.rows.append(row)
        return row

    def write(self, out: str | os.PathLike) -> ImportReport:
        """Write the table and its rejects file (always, so no stale rejects linger) and report."""
        out = Path(out)
        rejects_out = rejects_path(out)
        if self._dropped:
            self.notes.append(f"{self._dropped} list paths found only after dropping leading folders "
                              f"(e.g. {self._dropped_example})")
        write_csv(out, TABLE_COLUMNS, ([r.path, r.label, r.split, "" if r.fold is None else r.fold,
                                        r.group, ""] for r in self.rows))
        write_rejects(self.rejects, rejects_out)
        folds = sorted({r.fold for r in self.rows if r.fold is not None})
        counts = Counter(_count_key(r) for r in self.rows)
        return ImportReport(dataset=self.dataset, num_ranks=self.num_ranks, rows=len(self.rows),
                            rejects=len(self.rejects), folds=folds, out=out, images_root=self.root,
                            rejects_out=rejects_out, notes=list(self.notes),
                            counts=dict(sorted(counts.items(), key=lambda kv: _sort_key(kv[0]))),
                            first_rejects=[f"{r.source_row}: {r.reason}" for r in self.rejects[:5]])


def _count_key(row: Row) -> str:
    parts = ([] if row.fold is None else [f"fold {row.fold}"]) + ([row.split] if row.split else [])
    return "/".join(parts) or "all"


def _sort_key(key: str) -> tuple:
    m = re.match(r"fold (\d+)/?(.*)", key)
    order = {"train": 0, "val": 1, "test": 2}
    return (int(m.group(1)), order.get(m.group(2), 3)) if m else (-1, order.get(key, 3))


def rejects_path(out: Path) -> Path:
    """`imports/morph.csv` -> `imports/morph.rejects.csv`."""
    return out.with_name(f"{out.stem}.rejects.csv")


# ------------------------------------------------------------------------------------------- reading
def dataset_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise NumclipError(f"dataset root {root} is not a folder")
    return root


def checked(row: CsvRow, header: Sequence[str]) -> dict[str, str]:
    """The row's values, or this line's reject when its field count differs from the header's."""
    if not row.fits(header):
        raise Bad(f"{row.width} fields but the header has {len(header)}")
    return row.values


def pick_column(names: Sequence[str], choices: Sequence[str]) -> str | None:
    return next((c for c in choices if c in names), None)


def require_column(path: Path, names: Sequence[str], choices: Sequence[str], what: str) -> str:
    column = pick_column(names, choices)
    if column is None:
        raise NumclipError(f"{path}: no {what} column (looked for {', '.join(choices)}; "
                           f"it has columns {', '.join(names) or '(none)'})")
    return column


def list_fields(text: str, what: str = "<path> <label>") -> tuple[str, str]:
    """The first two whitespace-separated fields of a list line (more are allowed and ignored)."""
    parts = text.split()
    if len(parts) < 2:
        raise Bad(f"too few fields: expected '{what}'", parts[0] if parts else "")
    return parts[0], parts[1]


def as_int(text: str, what: str) -> int:
    """'36' and '36.0' -> 36; anything else is a reject naming `what`."""
    value = as_number(text, what)
    if not value.is_integer():
        raise Bad(f"non-integer {what} '{text.strip()}'")
    return int(value)


# a plain decimal number in ASCII digits: float() would also take "1_0", "٣", "nan" and "inf"
DECIMAL_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def as_number(text: str, what: str) -> float:
    value = text.strip()
    if not DECIMAL_NUMBER.fullmatch(value) or not math.isfinite(float(value)):
        raise Bad(f"non-numeric {what} '{value}'")
    return float(value)


def round_half_up(x: float) -> int:
    """2.5 -> 3 (Python's round() would give 2): a median between two grades goes to the higher."""
    return math.floor(x + 0.5)


def median_grade(scores: Sequence[float]) -> int:
    return round_half_up(statistics.median(scores))


# ------------------------------------------------------------------------------------------- images
def has_image_suffix(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def locate(root: Path, raw: str, prefixes: Sequence[str] = ("",), add_extension: bool = False) -> str:
    """The POSIX path, relative to `root`, of the existing image a list line names.

    Tried in order: the path as given under each prefix, then with its leading folders dropped one by
    one (lists written on another machine say `../../datasets/Morph/image/x.jpg` for `image/x.jpg`).
    `..` never survives, so the result stays inside the root. With `add_extension`, a name without an
    image suffix (a Flickr id) is also tried with each image suffix (.jpg first).
    """
    return _locate(root, raw, prefixes, add_extension)[0]


def _locate(root: Path, raw: str, prefixes: Sequence[str], add_extension: bool) -> tuple[str, int]:
    """(path, number of leading folders dropped to find it)."""
    text = raw.strip().replace("\\", "/")
    if not text:
        raise Bad("missing path")
    parts = [p for p in PurePosixPath(text).parts if p != "/"]
    extra = add_extension and not has_image_suffix(text)
    suffixes = ["", *IMAGE_EXTENSIONS] if extra else [""]
    for start in range(len(parts)):
        tail = parts[start:]
        if ".." in tail:
            continue
        for prefix in prefixes:
            for suffix in suffixes:
                rel = posixpath.join(prefix, *tail) + suffix
                if (root / rel).is_file():
                    return rel, start
    raise Bad("image not found under the dataset root", raw.strip())


def first_existing(root: Path, candidates: Sequence[str]) -> str:
    for rel in candidates:
        if (root / rel).is_file():
            return rel
    raise Bad(f"image not found (tried {', '.join(candidates)})", candidates[0] if candidates else "")


def image_files(folder: Path, root: Path) -> list[str]:
    """Image files anywhere under `folder` (dotfiles skipped), as sorted POSIX paths relative to root."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out += [Path(dirpath, f).relative_to(root).as_posix() for f in filenames
                if not f.startswith(".") and has_image_suffix(f)]
    return sorted(out)


# ------------------------------------------------------------------------------------ list folders
def split_of(file: Path) -> str | None:
    """`train.txt`, `ET_proto_train.txt`, `fold0-val.txt` -> the split; other names -> None."""
    if file.suffix.lower() != ".txt":
        return None
    stem = file.stem.lower()
    for split, names in SPLIT_ALIASES.items():
        if any(stem == n or re.search(rf"[_\-.]{n}$", stem) for n in names):
            return split
    return None


def split_lists(folder: Path) -> dict[str, Path]:
    """{split: list file} of the list files directly in `folder`; two files for one split is an error."""
    found: dict[str, Path] = {}
    for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        split = split_of(file)
        if split is None:
            continue
        if split in found:
            raise NumclipError(f"{folder} has two {split} lists: {found[split].name} and {file.name}")
        found[split] = file
    return {s: found[s] for s in SPLIT_ALIASES if s in found}  # train, val, test: the table reads in order


def list_folders(base: Path) -> list[Path]:
    """`base` and every folder below it that holds split list files, sorted by relative path."""
    found = []
    for dirpath, dirnames, _ in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(dirpath)
        if split_lists(folder):
            found.append(folder)
    return sorted(found, key=lambda p: p.relative_to(base).as_posix())


def fold_lists(base: Path, folders: Sequence[Path]) -> list[tuple[int | None, Path, dict[str, Path]]]:
    """(fold, folder, {split: file}) per list folder: lists in `base` itself are one set without a fold;
    otherwise each folder holding lists is one fold, numbered in sorted order. Train and test lists are
    required (val is optional): a folder missing one is an error naming the file expected."""
    if base in folders and len(folders) > 1:
        raise NumclipError(f"{base} holds split lists and so do its sub-folders "
                           f"({', '.join(str(f.relative_to(base)) for f in folders if f != base)}): "
                           "keep either one set of lists or one folder per fold")
    out: list[tuple[int | None, Path, dict[str, Path]]] = []
    for i, folder in enumerate(folders):
        lists = split_lists(folder)
        for split in ("train", "test"):
            if split not in lists:
                raise NumclipError(f"list file not found: {folder / f'{split}.txt'} (each list folder needs "
                                   "train and test lists; val is optional)")
        out.append((None if folder == base else i, folder, lists))
    return out
