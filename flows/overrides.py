"""Flow parameters -> params.yaml, the way `dvc exp run --set-param` does it.

Overrides are `section.key=value` strings (values parsed as YAML, as `numclip --set` reads them).
They are validated against the whole params schema before anything is written, then written into
params.yaml with comments and order kept, so DVC sees the change and reruns exactly the stages that
read those keys. Like `dvc exp run --set-param` in the workspace, the change stays in params.yaml.
"""

from __future__ import annotations

import io
from pathlib import Path

from ruamel.yaml import YAML

from numclip.atomic import write_text
from numclip.config import load_params, parse_override


def _round_trip_yaml() -> YAML:
    """ruamel round trip that keeps comments, order, quotes, `null` and short inline lists."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.default_flow_style = None
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml


def apply_param_overrides(project: Path, overrides: list[str]) -> list[str]:
    """Write `overrides` into project/params.yaml; returns those that changed a value."""
    path = project / "params.yaml"
    load_params(path, overrides)  # NumclipError naming the key when a value is wrong
    yaml = _round_trip_yaml()
    doc = yaml.load(path.read_text(encoding="utf-8")) if path.exists() else None
    doc = doc if doc is not None else {}
    changed = []
    for text in overrides:
        keys, value = parse_override(text)
        node = doc
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if keys[-1] not in node or node[keys[-1]] != value:
            node[keys[-1]] = value
            changed.append(text)
    if changed:
        text = io.StringIO()
        yaml.dump(doc, text)
        write_text(path, text.getvalue())
    return changed
