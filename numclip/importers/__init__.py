"""Importers for the licensed datasets of the published tables: each reads a dataset's usual layout and
writes one `table`-source CSV (`path,label,split,fold,group,caption`) plus a rejects CSV beside it.

    from numclip.importers import IMPORTERS
    report = IMPORTERS["morph"](Path("/data/MORPH"), Path("data/morph.csv"))
    print(report.summary())      # rows, rejects, folds, notes
    report.params()              # {"data.source": "table", "data.path": ..., "data.images_root": ...,
                                 #  "data.num_ranks": 62}

Each importer is `(root, out, **options) -> ImportReport`; the layouts and options are documented in
its module (morph, adience, hci, aesthetics).
"""

from __future__ import annotations

import inspect
import os
from typing import Callable

from numclip.core.errors import NumclipError
from numclip.importers.adience import import_adience
from numclip.importers.aesthetics import import_aesthetics
from numclip.importers.common import ImportReport
from numclip.importers.hci import import_hci
from numclip.importers.morph import import_morph

Importer = Callable[..., ImportReport]

IMPORTERS: dict[str, Importer] = {
    "morph": import_morph,
    "adience": import_adience,
    "hci": import_hci,
    "aesthetics": import_aesthetics,
}

__all__ = ["IMPORTERS", "ImportReport", "import_dataset", "import_adience", "import_aesthetics",
           "import_hci", "import_morph"]


def import_dataset(name: str, root: str | os.PathLike, out: str | os.PathLike, **options) -> ImportReport:
    """`IMPORTERS[name](root, out, **options)`, with an unknown name or option as a NumclipError (for a CLI)."""
    if name not in IMPORTERS:
        raise NumclipError(f"unknown dataset '{name}': use one of {', '.join(IMPORTERS)}")
    importer = IMPORTERS[name]
    allowed = [p for p in inspect.signature(importer).parameters if p not in ("root", "out")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise NumclipError(f"unknown option(s) for {name}: {', '.join(unknown)}; it takes {', '.join(allowed)}")
    return importer(root, out, **options)
