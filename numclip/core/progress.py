"""Progress bars for the long loops (pretraining, training, inference, image checks), one way.

A bar goes to stderr only when stderr is a terminal, so logs, CI and captured stage output stay free
of carriage returns. Its size comes from `shutil.get_terminal_size`, which falls back to 80 x 24
where a pseudo-terminal reports 0 x 0 (tqdm's own probe then hides every bar: none fits 0 rows).
"""

from __future__ import annotations

import shutil
from typing import Iterable, Optional, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: Optional[int] = None, enabled: bool = True) -> tqdm:
    """`iterable` wrapped in a bar that disappears when done (the loop's own log line stays)."""
    size = shutil.get_terminal_size()
    return tqdm(iterable, desc=desc, total=total, leave=False, disable=None if enabled else True,
                ncols=size.columns, nrows=size.lines, mininterval=0.2)
