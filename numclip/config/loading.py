"""Reading params: the YAML file (duplicate keys refused), `--set` overrides, validation into Params."""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from numclip.config.methods import METHOD_VARIANTS, default_methods
from numclip.config.params_file import load_document, set_key, to_plain
from numclip.config.schema import Params
from numclip.core.errors import NumclipError

_SHORT = reprlib.Repr()  # a value in a message stays short, however big the input
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 60, 60


def _format_validation_error(err: ValidationError, source: str) -> str:
    """One line per mistake, each naming its dotted key (a method's variant tag left out:
    methods.coop.n_ctx, not methods.coop.plain.n_ctx); a single mistake is a single line."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        if len(loc) >= 3 and loc[0] == "methods" and loc[2] in METHOD_VARIANTS:
            del loc[2]
        got = e.get("input")
        shown = "" if isinstance(got, dict) or e["type"] == "value_error" else f" (got {_SHORT.repr(got)})"
        lines.append(f"{'.'.join(loc) or '(top level)'}: {e['msg'].removeprefix('Value error, ')}{shown}")
    if len(lines) == 1:
        return f"invalid params in {source}: {lines[0]}"
    return "\n  ".join([f"invalid params in {source}:", *lines])


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.epochs=3' -> (['train', 'epochs'], 3); values are parsed as YAML."""
    if "=" not in text:
        raise NumclipError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise NumclipError(f"override '{text}' has an empty key")
    try:
        value = to_plain(YAML(typ="safe", pure=True).load(raw), f"override '{text}'") if raw.strip() else None
    except (YAMLError, RecursionError) as e:
        raise NumclipError(f"override '{text}': value is not valid YAML: {e}") from None
    return keys, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        set_key(raw, keys, value, text)
    return raw


def _with_default_methods(raw: dict) -> dict:
    """A dict of named entries has no per-key defaults: without a methods section, start from the presets."""
    if "methods" not in raw:
        raw["methods"] = {k: v.model_dump() for k, v in default_methods().items()}
    return raw


def validate_params(raw: dict, source: str) -> Params:
    """Params from raw sections (the default methods when none are given); NumclipError naming each
    wrong key, with `source` saying where they came from."""
    _with_default_methods(raw)
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise NumclipError(_format_validation_error(e, source)) from None


def load_params(path: str | Path | None = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read params.yaml (missing file: all defaults), apply `section.key=value` overrides, validate."""
    raw: dict = {}
    source = "defaults"
    if path is not None and Path(path).exists():
        source = str(path)
        raw = to_plain(load_document(Path(path)), str(path))
    elif path is not None and str(path) != "params.yaml":
        raise NumclipError(f"params file not found: {path}")
    raw = apply_overrides(_with_default_methods(raw), overrides or [])
    if overrides:
        source += " with overrides " + " ".join(overrides)
    return validate_params(raw, source)
