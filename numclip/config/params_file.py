"""params.yaml edited in place the way a person would: comments, key order and quoting kept.

`numclip init` and the Prefect flow's overrides both write params this way, so DVC sees exactly the
keys that changed and the file stays readable.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from numclip.core.atomic import write_text
from numclip.core.errors import NumclipError


def round_trip_yaml() -> YAML:
    """ruamel round trip that keeps comments, order, quotes, `null` and short inline lists."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.default_flow_style = None
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml


def load_document(path: Path) -> Any:
    """The file's round-trip document ({} when it is missing or empty); NumclipError naming the file
    when it is not a readable YAML mapping."""
    if not path.exists():
        return {}
    try:
        doc = round_trip_yaml().load(path.read_text(encoding="utf-8"))
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise NumclipError(f"{path} is not valid YAML: {getattr(e, 'problem', None) or e}{where}") from None
    except (UnicodeDecodeError, OSError) as e:
        raise NumclipError(f"{path} cannot be read: {e}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise NumclipError(f"{path} must hold a mapping of sections, got {type(doc).__name__}")
    return doc


def set_in_document(doc: Any, keys: list[str], value: Any) -> bool:
    """doc[k1][k2]... = value, creating sections; True when the value changed."""
    node = doc
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    if keys[-1] in node and node[keys[-1]] == value:
        return False
    node[keys[-1]] = value
    return True


def dump_document(doc: Any) -> str:
    text = io.StringIO()
    round_trip_yaml().dump(doc, text)
    return text.getvalue()


def write_document(path: Path, doc: Any) -> None:
    write_text(path, dump_document(doc))
