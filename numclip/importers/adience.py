"""Adience (8 age groups) -> numclip table: labels 0..7 for `(0, 2) (4, 6) (8, 12) (15, 20) (25, 32)
(38, 43) (48, 53) (60, 100)`, K = 8.

Two inputs are read (from `lists`, default the dataset root):

(a) the official fold files `fold_0_data.txt` … `fold_4_data.txt`: tab-separated, header
    `user_id original_image face_id age gender x y dx dy tilt_ang fiducial_yaw_angle fiducial_score`::

        30601258@N03	10399646885_67c7d20df9_o.jpg	1	(25, 32)	f	0	414	1086	1383	-115	30	17

    The image is `faces/<user_id>/coarse_tilt_aligned_face.<face_id>.<original_image>` or
    `aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image>`, whichever exists (`prefer`
    says which is tried first). Each row gets `fold` = its file's index and no split: the protocol tests
    on fold f and trains on the other four. The file's age labels that are not one of the 8 groups:

    * `(38, 42)` and `(38, 48)` -> `(38, 43)`; `(27, 32)` -> `(25, 32)`: ranges starting inside (or lying
      inside) one group, as commonly merged in the literature;
    * a single age (`35`, `3`, `57`, …) -> the group containing it; an age between two groups (`35`
      lies between `(25, 32)` and `(38, 43)`) is rejected rather than guessed;
    * `(8, 23)` (spans three groups), `None` and anything else are rejected with the reason.

(b) OrdinalCLIP-style lists `test_fold_is_<f>/{train,val,test}.txt` (val optional), each line
    `<path> <label>` with the path relative to `aligned/` and label 0..7::

        <root>/aligned/30601258@N03/landmark_aligned_face.1.10399646885_67c7d20df9_o.jpg
        <root>/test_fold_is_0/train.txt   30601258@N03/landmark_aligned_face.1.10399646885_67c7d20df9_o.jpg 4

    The same image is listed under several folds, so the table holds one row per (fold, image), each
    carrying that fold's split; `data.fold` selects one fold's rows.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from numclip.core.errors import NumclipError
from numclip.data.sources import read_lines
from numclip.importers.common import (
    Bad,
    Collector,
    ImportReport,
    as_int,
    dataset_root,
    first_existing,
    list_fields,
    split_lists,
)

AGE_GROUPS = ((0, 2), (4, 6), (8, 12), (15, 20), (25, 32), (38, 43), (48, 53), (60, 100))
OFF_GROUP = {(38, 42): 5, (38, 48): 5, (27, 32): 4}
NUM_FOLDS = 5
NEEDED = ("user_id", "original_image", "face_id", "age")
FACE_LAYOUTS = {"faces": "faces/{u}/coarse_tilt_aligned_face.{f}.{o}",
                "aligned": "aligned/{u}/landmark_aligned_face.{f}.{o}"}


def import_adience(root: str | os.PathLike, out: str | os.PathLike, *, lists: str | os.PathLike | None = None,
                   prefer: str = "faces") -> ImportReport:
    """Read Adience's fold files (or `test_fold_is_<f>` lists) and write the table `out`."""
    root, out = dataset_root(root), Path(out)
    if prefer not in FACE_LAYOUTS:
        raise NumclipError(f"prefer must be one of {', '.join(FACE_LAYOUTS)}, not '{prefer}'")
    base = Path(lists) if lists is not None else root
    col = Collector("adience", root, len(AGE_GROUPS))
    if list(base.glob("fold_*_data.txt")):
        for fold in range(NUM_FOLDS):
            _read_fold_file(col, base / f"fold_{fold}_data.txt", fold, prefer)
    elif folders := _fold_folders(base):
        for fold, folder in folders:
            _read_fold_lists(col, folder, fold)
    else:
        raise NumclipError(f"no Adience fold files (fold_0_data.txt … fold_4_data.txt) or "
                           f"test_fold_is_<f>/ list folders in {base}")
    return col.write(out)


def age_group(text: str) -> int:
    """An Adience age label ('(25, 32)', '35', 'None') -> the group index 0..7 (see the module doc)."""
    value = text.strip()
    if m := re.fullmatch(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)", value):
        span = (int(m.group(1)), int(m.group(2)))
        if span in AGE_GROUPS:
            return AGE_GROUPS.index(span)
        if span in OFF_GROUP:
            return OFF_GROUP[span]
        raise Bad(f"age range {value} is not one of the 8 Adience groups")
    if re.fullmatch(r"\d+", value):
        age = int(value)
        for i, (lo, hi) in enumerate(AGE_GROUPS):
            if lo <= age <= hi:
                return i
        raise Bad(f"age {age} lies between two Adience groups")
    raise Bad(f"no age group ('{value}')" if value in ("", "None") else f"unknown age label '{value}'")


def _header(file: Path, lines: list[tuple[str, str]]) -> dict[str, int]:
    if not lines:
        raise NumclipError(f"{file} is empty: the Adience header row is required")
    names = [n.strip().lower() for n in lines[0][1].split("\t")]
    if not all(n in names for n in NEEDED):
        raise NumclipError(f"{lines[0][0]} is not the Adience header (tab-separated, with columns "
                           f"{', '.join(NEEDED)}); it reads {lines[0][1][:80]!r}")
    return {n: names.index(n) for n in NEEDED}


def _read_fold_file(col: Collector, file: Path, fold: int, prefer: str) -> None:
    lines = read_lines(file, comments=False)
    index = _header(file, lines)
    width = max(index.values()) + 1
    order = [prefer] + [k for k in FACE_LAYOUTS if k != prefer]
    for src, text in lines[1:]:
        with col.line(src):
            fields = [f.strip() for f in text.split("\t")]
            if len(fields) < width:
                raise Bad(f"too few fields ({len(fields)}; the age is field {index['age'] + 1})")
            u, o, f = (fields[index[k]] for k in ("user_id", "original_image", "face_id"))
            if not (u and o and f):
                raise Bad("missing user_id, original_image or face_id")
            label = age_group(fields[index["age"]])
            path = first_existing(col.root, [FACE_LAYOUTS[k].format(u=u, f=f, o=o) for k in order])
            col.add(src, path, label, fold=fold)


def _fold_folders(base: Path) -> list[tuple[int, Path]]:
    found: dict[int, Path] = {}
    for folder in sorted([*base.glob("test_fold_is_*"), *base.glob("*/test_fold_is_*")]):
        m = re.fullmatch(r"test_fold_is_(\d+)", folder.name)
        if not (m and folder.is_dir()):
            continue
        fold = int(m.group(1))
        if fold in found:
            raise NumclipError(f"two list folders for fold {fold}: {found[fold]} and {folder}")
        found[fold] = folder
    return sorted(found.items())


def _read_fold_lists(col: Collector, folder: Path, fold: int) -> None:
    lists = split_lists(folder)
    for split in ("train", "test"):
        if split not in lists:
            raise NumclipError(f"list file not found: {folder / f'{split}.txt'} (val.txt is optional)")
    for split, file in lists.items():
        for src, text in read_lines(file):
            with col.line(src, text.split()[0]):
                raw_path, label = list_fields(text)
                col.add(src, col.find(raw_path, prefixes=("aligned", "")), as_int(label, "label"),
                        split=split, fold=fold)
