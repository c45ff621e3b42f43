"""The one CSV reader and the one reject record, shared by the data sources, ingest and importers."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from numclip.core.atomic import write_csv
from numclip.core.errors import NumclipError

REJECT_COLUMNS = ("source_row", "path", "label", "reason")


@dataclass(frozen=True)
class Reject:
    """A row left out, where it came from and why: every rejects file has these columns."""

    source_row: str
    path: str
    label: str
    reason: str


def write_rejects(rejects: Iterable[Reject], path: str | Path) -> None:
    write_csv(path, list(REJECT_COLUMNS), ([r.source_row, r.path, r.label, r.reason] for r in rejects))


def norm_column(name: str) -> str:
    """Header names compare without case, surrounding blanks or a leading '#'."""
    return name.strip().lstrip("#").strip().lower()


def unique_columns(path: Path, header: Sequence[str]) -> list[str]:
    """The normalised column names; NumclipError naming a column given twice (which value is meant?)."""
    names = [norm_column(h) for h in header]
    first: dict[str, int] = {}
    for i, name in enumerate(names, start=1):
        if name and name in first:
            raise NumclipError(f"{path}: column '{name}' appears twice in the header (columns {first[name]} "
                               f"and {i}); keep one")
        first.setdefault(name, i)
    return names


@dataclass(frozen=True)
class CsvRow:
    source_row: str  # file:line of the row's first line
    values: dict[str, str]  # by normalised column name; partial when the line is short
    width: int  # fields found on the line

    def fits(self, header: Sequence[str]) -> bool:
        return self.width == len(header)


def read_csv_table(path: Path, what: str = "a header row naming its columns") -> tuple[list[str], list[CsvRow]]:
    """Header (normalised names) and the data rows of a CSV/TSV; blank lines are not rows.

    The delimiter is a tab for .tsv files or a header holding tabs, else a comma.
    """
    if not path.is_file():
        raise NumclipError(f"table not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            tab = path.suffix.lower() in (".tsv", ".tab") or "\t" in f.readline()
            f.seek(0)
            reader = csv.reader(f, delimiter="\t" if tab else ",")
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                raise NumclipError(f"{path} is empty: {what} is required")
            names = unique_columns(path, header)
            rows, end = [], reader.line_num
            for fields in reader:
                line, end = end + 1, reader.line_num  # a quoted field may span lines: report the first
                if any(x.strip() for x in fields):
                    rows.append(CsvRow(f"{path}:{line}", dict(zip(names, fields)), len(fields)))
    except UnicodeDecodeError as e:
        raise NumclipError(f"{path} is not UTF-8 text: {e}") from None
    except csv.Error as e:
        raise NumclipError(f"{path}:{reader.line_num}: not valid CSV: {e}") from None
    return names, rows
