"""params.yaml read and edited the way DVC reads it (ruamel, YAML 1.2): comments, key order and
quoting kept, a key given twice refused.

Loading params, `numclip init` and the Prefect flow's overrides all go through here, so numclip and
DVC see the same values, and an edit changes exactly the keys it sets.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import YAMLError

from numclip.core.atomic import write_text
from numclip.core.errors import NumclipError
from numclip.core.text import one_line


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
    if not path.is_file():  # a folder, or a pipe or device that would block or never end
        raise NumclipError(f"{path} is not a regular file: give the path of a params YAML file")
    try:
        doc = round_trip_yaml().load(path.read_text(encoding="utf-8-sig"))  # a BOM is not a key
    except DuplicateKeyError as e:
        key = str(e.problem).split('"')[1] if '"' in str(e.problem) else "?"
        raise NumclipError(f"{path}: duplicate key '{key}' (line {e.problem_mark.line + 1})") from None
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise NumclipError(f"{path} is not valid YAML: {one_line(getattr(e, 'problem', None) or e)}{where}") from None
    except UnicodeDecodeError as e:
        raise NumclipError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8") from None
    except OSError as e:
        raise NumclipError(f"{path} cannot be read: {e}") from None
    except RecursionError:
        raise NumclipError(f"{path} is nested too deeply to be a params file") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise NumclipError(f"{path} must hold a mapping of sections, got {type(doc).__name__}")
    return doc


def set_key(doc: Any, keys: list[str], value: Any, shown: str | None = None) -> bool:
    """doc[k1][k2]... = value, creating missing sections; True when the value changed. `shown`
    (default: the dotted key) names the override in the error when a key is not a section."""
    node = doc
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise NumclipError(f"override '{shown or '.'.join(keys)}': '{key}' is not a section")
        node = child
    if keys[-1] in node and node[keys[-1]] == value:
        return False
    node[keys[-1]] = value
    return True


MAX_VALUES = 100_000  # a params file holds a few hundred; far more means aliases of aliases (a YAML bomb)
MAX_DEPTH = 32


def to_plain(node: Any, source: str = "params") -> Any:
    """A round-trip document as plain dicts, lists and scalars (what validation and hashing expect).
    NumclipError naming `source` when aliases expand it past MAX_VALUES values or MAX_DEPTH levels,
    which would otherwise take hours and gigabytes."""
    count = 0

    def plain(node: Any, depth: int) -> Any:
        nonlocal count
        count += 1
        if count > MAX_VALUES:
            raise NumclipError(f"{source} expands to more than {MAX_VALUES:,} values (YAML aliases "
                               "nested in each other?): write the values out")
        if depth > MAX_DEPTH:
            raise NumclipError(f"{source} nests more than {MAX_DEPTH} levels deep")
        if isinstance(node, dict):
            return {str(k): plain(v, depth + 1) for k, v in node.items()}
        if isinstance(node, list):
            return [plain(v, depth + 1) for v in node]
        for kind in (bool, int, float, str):
            if isinstance(node, kind):
                return kind(node)
        return node

    return plain(node, 0)


def dump_document(doc: Any) -> str:
    text = io.StringIO()
    round_trip_yaml().dump(doc, text)
    return text.getvalue()


def write_document(path: Path, doc: Any) -> None:
    write_text(path, dump_document(doc))
