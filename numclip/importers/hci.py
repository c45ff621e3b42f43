"""Historical Colour Image Dating (HCI) -> numclip table: decades 1930s..1970s -> labels 0..4, K = 5.

Input: one folder per decade, named `1930s` … `1970s` (or `1930` … `1970`), images anywhere below it::

    <root>/1930s/b166b343.jpg
    <root>/1940s/…

The decade folders may sit a few levels down (the release unpacks to
`HistoricalColor-ECCV2012/data/imgs/decade_database/<decade>/`); paths stay relative to the root.

Protocol (docs/protocols.md): 10 random splits, per decade 210 train / 5 val / 50 test (265 of the 265
images each decade has). The table holds one row per (fold, image) with that fold's split, folds
0..9; `data.fold` selects one. Fold f shuffles each decade's sorted file list with a generator seeded by
(`seed`, f, decade), so the same seed gives the same table and different folds differ. A decade with
more than 265 images leaves the surplus out of each fold (a different surplus per fold); one with fewer
gets proportionally scaled counts (test = round(n·50/265) ≥ 1, val = round(n·5/265), the rest train),
and the report says so.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from numclip.core.errors import NumclipError
from numclip.importers.common import (
    Collector,
    ImportReport,
    dataset_root,
    image_files,
    round_half_up,
)

DECADES = ("1930s", "1940s", "1950s", "1960s", "1970s")
PROTOCOL = (("train", 210), ("val", 5), ("test", 50))
PER_DECADE = sum(n for _, n in PROTOCOL)
SEARCH_DEPTH = 4


def import_hci(root: str | os.PathLike, out: str | os.PathLike, *, seed: int = 0,
               num_folds: int = 10) -> ImportReport:
    """Read HCI's decade folders under `root` and write the table `out` with `num_folds` seeded splits."""
    root, out = dataset_root(root), Path(out)
    if num_folds < 1:
        raise NumclipError(f"num_folds must be at least 1, not {num_folds}")
    col = Collector("hci", root, len(DECADES))
    home = _decade_home(root)
    images = {d: _decade_images(home, d, root) for d in DECADES}
    counts = {d: split_counts(len(files)) for d, files in images.items()}
    for d, files in images.items():
        used = sum(counts[d].values())
        if len(files) > PER_DECADE:
            col.notes.append(f"{d}: {len(files)} images; each fold uses {PER_DECADE}, leaving "
                             f"{len(files) - PER_DECADE} out")
        elif len(files) < PER_DECADE:
            col.notes.append(f"{d}: {len(files)} images, fewer than {PER_DECADE}: counts scaled to "
                             + " / ".join(f"{n} {s}" for s, n in counts[d].items()) + f" ({used} used)")
    for fold in range(num_folds):
        for label, d in enumerate(DECADES):
            for path, split in sorted(assign_splits(images[d], counts[d], seed, fold, d).items()):
                col.add(path, path, label, split=split, fold=fold)
    return col.write(out)


def split_counts(n: int) -> dict[str, int]:
    """210/5/50 for a full decade; scaled in proportion (test ≥ 1, train ≥ 1) for a smaller one."""
    if n >= PER_DECADE:
        return dict(PROTOCOL)
    test = max(1, round_half_up(n * 50 / PER_DECADE))
    val = round_half_up(n * 5 / PER_DECADE)
    if n - test - val < 1:
        raise NumclipError(f"an HCI decade has only {n} images: too few for a train/test split")
    return {"train": n - test - val, "val": val, "test": test}


def assign_splits(files: list[str], counts: dict[str, int], seed: int, fold: int,
                  decade: str) -> dict[str, str]:
    """{path: split} of one decade in one fold: a seeded shuffle cut into the counts, in order."""
    order = sorted(files)
    random.Random(f"hci:{seed}:{fold}:{decade}").shuffle(order)
    out, start = {}, 0
    for split, n in counts.items():
        out.update(dict.fromkeys(order[start:start + n], split))
        start += n
    return out


def _decade_dir(folder: Path, decade: str) -> Path | None:
    found = [folder / name for name in (decade, decade[:-1]) if (folder / name).is_dir()]
    if len(found) > 1:
        raise NumclipError(f"{folder} has both {found[0].name}/ and {found[1].name}/: keep one per decade")
    return found[0] if found else None


def _decade_home(root: Path) -> Path:
    """The folder holding the decade folders: the root, or the shallowest folder below it with one."""
    level = [root]
    for _ in range(SEARCH_DEPTH + 1):
        for folder in level:
            if any(_decade_dir(folder, d) for d in DECADES):
                return folder
        level = [p for f in level for p in sorted(f.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    raise NumclipError(f"no HCI decade folders ({', '.join(DECADES)}) found in {root} or below it")


def _decade_images(home: Path, decade: str, root: Path) -> list[str]:
    folder = _decade_dir(home, decade)
    if folder is None:
        raise NumclipError(f"HCI decade folder not found: {home / decade} (or {home / decade[:-1]})")
    files = image_files(folder, root)
    if not files:
        raise NumclipError(f"HCI decade folder {folder} holds no images")
    return files
