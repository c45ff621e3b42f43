"""JSON kept inside numclip's safetensors files (model cards, backbone and head records, checkpoint
state), read with limits on size and depth, so a tampered file is a one-line error naming it rather
than a traceback, a hang or a stack overflow. Every kind of file reads its metadata through here."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from safetensors import SafetensorError, safe_open

from numclip.core.errors import NumclipError

MAX_DEPTH = 64  # numclip's deepest record, a checkpoint's optimizer state, is about 15 levels deep
MAX_BYTES = 16 * 2**20  # safetensors itself refuses headers over 100 MB


def _deeper_than(value: Any, limit: int) -> bool:
    """True when `value` nests more than `limit` levels (stops descending at the limit)."""
    if limit < 0:
        return True
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return any(_deeper_than(child, limit - 1) for child in children)


def json_object(text: Any, source: str, what: str, max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """`text` parsed as a JSON object; NumclipError naming `source` and `what` otherwise."""
    where = f"{source}: its {what}"
    if not isinstance(text, str):
        raise NumclipError(f"{where} is missing or not text")
    if len(text) > max_bytes:
        raise NumclipError(f"{where} is {len(text):,} bytes, more than the {max_bytes:,} allowed")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise NumclipError(f"{where} is not JSON ({e})") from None
    except RecursionError:
        raise NumclipError(f"{where} is nested too deeply") from None
    if not isinstance(value, dict):
        raise NumclipError(f"{where} must be a JSON object, not a {type(value).__name__}")
    if _deeper_than(value, MAX_DEPTH):
        raise NumclipError(f"{where} is nested more than {MAX_DEPTH} levels deep")
    return value


@contextlib.contextmanager
def open_safetensors(path: str | Path, what: str) -> Iterator[Any]:
    """A safetensors file's handle (metadata and tensors from one open); NumclipError naming the
    file when it is missing, not a regular file, or not safetensors. `what` says what it should be."""
    path = Path(path)
    if not path.is_file():
        raise NumclipError(f"{what} not found: {path}" if not path.exists() else f"{what} {path} is not a file")
    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except (SafetensorError, OSError) as e:
        raise NumclipError(f"{path} is not a readable {what} (safetensors): {e}") from None


def safetensors_metadata(path: str | Path, what: str) -> dict[str, str]:
    """The string metadata of a safetensors file (see `open_safetensors`)."""
    with open_safetensors(path, what) as f:
        return f.metadata() or {}


def first_problem(err: ValidationError, *prefix: str) -> str:
    """'key.sub: message' for the first mistake a record's validation found (one line)."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in (*prefix, *first["loc"])) or "(top level)"
    return f"{key}: {first['msg']}"
