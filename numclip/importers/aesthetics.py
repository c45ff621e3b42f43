"""Image Aesthetics (Schifanella et al.) -> numclip table: 4 categories × grades 1..5 -> labels 0..4, K = 5,
`group` = the category (animals, urban, people, nature; `animal` is read as `animals`).

Inputs (image paths are looked up as given, then under `<category>/`, `img_files/` and `images/`, and an
id without a suffix, such as a Flickr photo id, also with .jpg/.jpeg/.png):

(a) the release's table (`beauty-icwsm15-dataset.tsv`) or any CSV/TSV with an image column (`path`,
    `image`, `file`, `filename`, `flickr_photo_id`, `photo_id`, `image_id`, `id`), a `category` column and
    the grades: a single `grade`/`score`/`rating` 1..5, or the raters' scores as one list column
    (`beauty_scores`: "3,4,3,3,2") or one column per rater (`rater1` … `rater5`). Label =
    round(median of the scores) − 1, rounding a half up (scores 1,2,3,4 -> median 2.5 -> grade 3 -> label 2)::

        #flickr_photo_id	category	beauty_scores
        3277456063	animals	3,4,4,3,4

(b) OrdinalCLIP-style lists per category under `lists` (default the root), lines `<path> <label>`:
    with folds given, one folder per fold, numbered 0.. in sorted order::

        <lists>/animals/fold_0/train.txt    animals/3277456063.jpg 3
        <lists>/animals/fold_0/test.txt     …

    or one list of the whole category, `<lists>/animals.txt` or `<lists>/animals_datasets.txt`.
    List labels are ranks 0..4; with `list_grades=True` they are grades 1..5 (L2RCLIP's `4.0`), label =
    round(grade) − 1.

Folds (5 per category): from the lists when they give them (one row per (fold, image), with the split);
otherwise assigned: within each (category, grade) the sorted images are shuffled with a generator seeded
by (`seed`, category, grade) and dealt round-robin into folds 0..4, continuing the deal across grades so
each category's folds differ in size by at most one. Assigned-fold rows have no split (fold f is the test
fold); each image is one row.
"""

from __future__ import annotations

import os
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from numclip.core.errors import NumclipError
from numclip.data.sources import read_lines
from numclip.data.tables import read_csv_table
from numclip.importers.common import (
    Bad,
    Collector,
    ImportReport,
    Row,
    as_int,
    as_number,
    checked,
    dataset_root,
    fold_lists,
    list_fields,
    list_folders,
    median_grade,
    pick_column,
    rejects_path,
    require_column,
    round_half_up,
)

CATEGORIES = ("animals", "urban", "people", "nature")
ALIASES = {"animal": "animals"}
NUM_GRADES = 5
IMAGE_PREFIXES = ("", "{c}", "img_files", "images")
PATH_COLUMNS = ("path", "image", "image_path", "file", "filename", "flickr_photo_id", "photo_id",
                "image_id", "id")
CATEGORY_COLUMNS = ("category", "class", "group")
GRADE_COLUMNS = ("grade", "score", "rating")
SCORES_COLUMNS = ("beauty_scores", "scores", "ratings")
RATER_COLUMN = re.compile(r"(rater|score|rating|vote)[ _-]?(\d+)")


def import_aesthetics(root: str | os.PathLike, out: str | os.PathLike, *,
                      lists: str | os.PathLike | None = None, csv_path: str | os.PathLike | None = None,
                      list_grades: bool = False, seed: int = 0, num_folds: int = 5,
                      categories: Sequence[str] = CATEGORIES) -> ImportReport:
    """Read the Aesthetics table or per-category lists under `root` and write the table `out`."""
    root, out = dataset_root(root), Path(out)
    if num_folds < 2:
        raise NumclipError(f"num_folds must be at least 2, not {num_folds}")
    cats = [_category(c, CATEGORIES) for c in categories]
    col = Collector("aesthetics", root, NUM_GRADES)
    if csv_path is not None:
        _read_csv(col, Path(csv_path), cats)
    else:
        base = Path(lists) if lists is not None else root
        found = {c: _category_lists(base, c) for c in cats} if base.is_dir() else {}
        if any(found.values()):
            for c in cats:
                _read_category(col, base, c, found[c], list_grades)
        elif lists is not None:
            raise NumclipError(f"no Aesthetics lists ({cats[0]}/<fold>/train.txt or {cats[0]}.txt) in {base}")
        else:
            _read_csv(col, _the_table(root, out), cats)
    assign_folds(col, num_folds, seed)
    return col.write(out)


def _category(text: str, allowed: Sequence[str]) -> str:
    name = ALIASES.get(text.strip().lower(), text.strip().lower())
    if name not in allowed:
        raise NumclipError(f"unknown Aesthetics category '{text}': use {', '.join(CATEGORIES)}")
    return name


def _prefixes(category: str) -> list[str]:
    return [p.format(c=category) for p in IMAGE_PREFIXES]


# ---------------------------------------------------------------------------------------------- lists
def _category_lists(base: Path, c: str) -> list | Path | None:
    """Fold lists in `<base>/<c>/…`, else the whole-category list file, else None."""
    if (base / c).is_dir() and (folders := list_folders(base / c)):
        return fold_lists(base / c, folders)
    return next((f for f in (base / f"{c}.txt", base / f"{c}_datasets.txt") if f.is_file()), None)


def _read_category(col: Collector, base: Path, c: str, found: list | Path | None, grades: bool) -> None:
    if found is None:
        raise NumclipError(f"no Aesthetics lists for category {c}: expected {base / c}/<fold>/train.txt "
                           f"(and test.txt) or {base / f'{c}.txt'} (or pass categories=…)")
    if isinstance(found, Path):
        _read_list(col, found, c, grades, split="", fold=None)
        return
    for fold, folder, lists in found:
        if fold is not None:
            col.notes.append(f"{c}: fold {fold} = {folder.relative_to(base).as_posix()}")
        for split, file in lists.items():
            _read_list(col, file, c, grades, split, fold)


def _read_list(col: Collector, file: Path, c: str, grades: bool, split: str, fold: int | None) -> None:
    for src, text in read_lines(file):
        with col.line(src, text.split()[0]):
            raw_path, value = list_fields(text)
            label = _grade_label(value) if grades else as_int(value, "label")
            path = col.find(raw_path, _prefixes(c), add_extension=True)
            col.add(src, path, label, split=split, fold=fold, group=c)


def _grade_label(text: str) -> int:
    grade = as_number(text, "grade")
    if not 1 <= grade <= NUM_GRADES:
        raise Bad(f"grade {text.strip()} outside 1..{NUM_GRADES}")
    return round_half_up(grade) - 1


# ------------------------------------------------------------------------------------------------ csv
def _the_table(root: Path, out: Path) -> Path:
    skip = {out.resolve(), rejects_path(out).resolve()}
    tables = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".tsv")
                    and p.resolve() not in skip)
    if len(tables) != 1:
        found = ", ".join(p.name for p in tables) or "none"
        raise NumclipError(f"no Aesthetics lists in {root}, and not exactly one CSV/TSV at its top "
                           f"(found: {found}): pass csv_path or lists")
    return tables[0]


def _grade_reader(path: Path, names: list[str]):
    """A function (row values -> label) for whichever grade columns the table has."""
    if column := pick_column(names, GRADE_COLUMNS):
        return lambda v: _grade_label(v[column])
    if column := pick_column(names, SCORES_COLUMNS):
        return lambda v: _median_label(re.split(r"[,;\s]+", v[column].strip()))
    raters = sorted((int(m.group(2)), n) for n in names if (m := RATER_COLUMN.fullmatch(n)))
    if raters:
        return lambda v: _median_label([v[n] for _, n in raters])
    raise NumclipError(f"{path}: no grade columns (a grade column {', '.join(GRADE_COLUMNS)}, a scores "
                       f"list {', '.join(SCORES_COLUMNS)}, or rater1..rater5); it has {', '.join(names)}")


def _median_label(values: list[str]) -> int:
    scores = [as_number(v, "score") for v in values if v.strip()]
    if not scores:
        raise Bad("no scores")
    if bad := [s for s in scores if not 1 <= s <= NUM_GRADES]:
        raise Bad(f"score {bad[0]:g} outside 1..{NUM_GRADES}")
    return median_grade(scores) - 1


def _read_csv(col: Collector, path: Path, cats: list[str]) -> None:
    names, rows = read_csv_table(path)
    path_column = require_column(path, names, PATH_COLUMNS, "image")
    category_column = require_column(path, names, CATEGORY_COLUMNS, "category")
    label_of = _grade_reader(path, names)
    for row in rows:
        src = row.source_row
        with col.line(src, row.values.get(path_column, "")):
            values = checked(row, names)
            raw = values[category_column].strip()
            c = ALIASES.get(raw.lower(), raw.lower())
            if c not in CATEGORIES:
                raise Bad(f"unknown category '{raw}'")
            if c not in cats:
                raise Bad(f"category {c} not imported (categories={','.join(cats)})")
            label = label_of(values)
            col.add(src, col.find(values[path_column], _prefixes(c), add_extension=True), label,
                    group=c)


# ---------------------------------------------------------------------------------------------- folds
def assign_folds(col: Collector, num_folds: int, seed: int) -> None:
    """Seeded stratified folds for the rows that came without fold or split (see the module doc)."""
    pending: dict[str, dict[int, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for row in col.rows:
        if row.fold is None and not row.split:
            pending[row.group][row.label].append(row)
    for c in sorted(pending):
        deal = 0
        for label in sorted(pending[c]):
            rows = sorted(pending[c][label], key=lambda r: r.path)
            random.Random(f"aesthetics:{seed}:{c}:{label}").shuffle(rows)
            for row in rows:
                row.fold = deal % num_folds
                deal += 1
        col.notes.append(f"{c}: folds assigned (seed {seed}, {num_folds} folds stratified by grade)")
