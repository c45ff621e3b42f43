"""MORPH II (age 16..77) -> numclip table: label = age - `label_offset` (16), K = `num_ranks` (62).

Two inputs are read (paths in them are relative to the dataset root; lists written elsewhere, e.g.
`../../datasets/Morph/image/x.JPG`, are matched by dropping leading folders until the image exists):

(a) OrdinalCLIP-style list files, one per split: `train.txt`, optional `val.txt`, `test.txt`
    (also `<anything>_train.txt`, e.g. OrdinalCLIP's `ET_proto_train.txt`), each line `<path> <age>`::

        <root>/image/070081_2F36.JPG
        <root>/lists/setting_A/fold_0/train.txt     image/070081_2F36.JPG 36
        <root>/lists/setting_A/fold_0/test.txt      ...

    Lists directly in the searched folder (`lists`, default the root) are one set without folds; else each
    sub-folder holding lists is one fold, numbered 0.. in sorted order of its path (the report notes which
    folder is which fold). An image in several folds gives one row per fold, each with its own split.
(b) the MORPH II CSV (e.g. `morph_2008_nonCommercial.csv`): column names case-insensitive, `age`
    required, the image in `file`, `photo`, `path`, `filename` or `image`; no split, no folds::

        id_num,picture_num,dob,doa,race,gender,facial_hair,age,age_diff,glasses,photo
        3,0,...,42,...,Album2/003_0M42.JPG

With neither `lists` nor `csv_path` given, list files under the root win; otherwise the one CSV at the
root's top is read. The OrdinalCLIP setting (labels = ages, K = 101) is `label_offset=0, num_ranks=101`.
"""

from __future__ import annotations

import os
from pathlib import Path

from numclip.core.errors import NumclipError
from numclip.data.sources import read_lines
from numclip.data.tables import read_csv_table
from numclip.importers.common import (
    Bad,
    Collector,
    ImportReport,
    as_int,
    checked,
    dataset_root,
    fold_lists,
    list_fields,
    list_folders,
    rejects_path,
    require_column,
)

PATH_COLUMNS = ("file", "photo", "path", "filename", "image")


def import_morph(root: str | os.PathLike, out: str | os.PathLike, *, lists: str | os.PathLike | None = None,
                 csv_path: str | os.PathLike | None = None, label_offset: int = 16,
                 num_ranks: int = 62) -> ImportReport:
    """Read MORPH II list files or its CSV under `root` and write the table `out` (see the module doc)."""
    root, out = dataset_root(root), Path(out)
    col = Collector("morph", root, num_ranks)
    if csv_path is not None:
        _read_csv(col, Path(csv_path), label_offset)
        return col.write(out)
    base = Path(lists) if lists is not None else root
    if not base.is_dir():
        raise NumclipError(f"MORPH list folder {base} is not a folder")
    folders = list_folders(base)
    if folders:
        _read_lists(col, base, folders, label_offset)
    elif lists is not None:
        raise NumclipError(f"no MORPH list files (train.txt, test.txt) under {base}")
    else:
        _read_csv(col, _the_csv(root, out), label_offset)
    return col.write(out)


def _the_csv(root: Path, out: Path) -> Path:
    skip = {out.resolve(), rejects_path(out).resolve()}
    tables = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".csv"
                    and p.resolve() not in skip)
    if not tables:
        raise NumclipError(f"no MORPH list files (train.txt, test.txt) or CSV found under {root}")
    if len(tables) > 1:
        raise NumclipError(f"{root} holds several CSVs ({', '.join(p.name for p in tables)}): "
                           "pass csv_path to choose one")
    return tables[0]


def _label(age_text: str, label_offset: int, num_ranks: int) -> int:
    age = as_int(age_text, "age")
    if not 0 <= age - label_offset < num_ranks:
        raise Bad(f"age {age} outside {label_offset}..{label_offset + num_ranks - 1}")
    return age - label_offset


def _read_lists(col: Collector, base: Path, folders: list[Path], label_offset: int) -> None:
    for fold, folder, lists in fold_lists(base, folders):
        if fold is not None:
            col.notes.append(f"fold {fold} = {folder.relative_to(base).as_posix()}")
        for split, file in lists.items():
            for src, text in read_lines(file):
                with col.line(src, text.split()[0]):
                    raw_path, age = list_fields(text, "<path> <age>")
                    label = _label(age, label_offset, col.num_ranks)
                    col.add(src, col.find(raw_path), label, split=split, fold=fold)


def _read_csv(col: Collector, path: Path, label_offset: int) -> None:
    names, rows = read_csv_table(path)
    age_column = require_column(path, names, ("age",), "age")
    path_column = require_column(path, names, PATH_COLUMNS, "image path")
    for row in rows:
        src = row.source_row
        with col.line(src, row.values.get(path_column, "")):
            values = checked(row, names)
            label = _label(values[age_column], label_offset, col.num_ranks)
            col.add(src, col.find(values[path_column]), label)
