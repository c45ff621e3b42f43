"""Progress bars for the long loops (pretraining, training, inference, image checks), one way.

A bar goes to stderr only when stderr is a terminal, so logs, CI and captured stage output stay free
of carriage returns. Its width comes from `shutil.get_terminal_size`, which falls back to 80 columns
where a pseudo-terminal reports none (tqdm's own probe then draws a bar of width 0: nothing shows).
"""

from __future__ import annotations

import shutil
from typing import Iterable, Optional, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: Optional[int] = None, enabled: bool = True) -> tqdm:
    """`iterable` wrapped in a bar that disappears when done (the loop's own log line stays)."""
    return tqdm(iterable, desc=desc, total=total, leave=False, disable=None if enabled else True,
                ncols=shutil.get_terminal_size().columns, mininterval=0.2)
