"""Flow parameters -> params.yaml, the way `dvc exp run --set-param` does it.

Overrides are `section.key=value` strings (values parsed as YAML, as `numclip --set` reads them).
They are validated against the whole params schema before anything is written, then written into
params.yaml with comments and order kept, so DVC sees the change and reruns exactly the stages that
read those keys. Like `dvc exp run --set-param` in the workspace, the change stays in params.yaml.
"""

from __future__ import annotations

from pathlib import Path

from numclip.config import load_params, parse_override
from numclip.config.params_file import load_document, set_key, write_document


def apply_param_overrides(project: Path, overrides: list[str]) -> list[str]:
    """Write `overrides` into project/params.yaml; returns those that changed a value."""
    path = project / "params.yaml"
    load_params(path, overrides)  # NumclipError naming the key when a value is wrong
    doc = load_document(path)
    changed = [text for text in overrides if set_key(doc, *parse_override(text))]
    if changed:
        write_document(path, doc)
    return changed
