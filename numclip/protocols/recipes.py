"""Recipes: one YAML file per dataset holding the published table's rows as params presets.

A recipe names the dataset (and the importer that reads it), the protocol (folds, seeds), the params
every method shares (`section.key: value`, as `--set` takes them), and per method its published
numbers and the params that method changes (only train.* and methods.* keys: a method never changes
the data or the backbone, which every method of a fold shares).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from numclip.config.params_file import load_document, to_plain
from numclip.core.errors import NumclipError

METHOD_KEYS = ("train.", "methods.")


@dataclass
class Recipe:
    name: str
    dataset: str
    params: dict[str, Any]
    methods: dict[str, dict[str, Any]]  # method -> {"published": {...}, "params": {...}}
    folds: list[Optional[int]] = field(default_factory=lambda: [None])
    seeds: list[int] = field(default_factory=lambda: [0])

    def published(self) -> dict[str, dict[str, float]]:
        return {m: spec.get("published") or {} for m, spec in self.methods.items()}

    def method_params(self) -> dict[str, dict[str, Any]]:
        return {m: spec.get("params") or {} for m, spec in self.methods.items()}


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise NumclipError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise NumclipError(f"recipe not found: {path}")
    raw = to_plain(load_document(path), str(path))  # the params file's reader: its errors and limits
    missing = [k for k in ("name", "dataset", "params", "methods") if k not in raw]
    if missing:
        raise NumclipError(f"{path}: missing key(s) {', '.join(missing)}")
    methods = {}
    for method, spec in _mapping(raw["methods"], f"{path}: methods").items():
        spec = _mapping(spec, f"{path}: methods.{method}")
        for key in _mapping(spec.get("params"), f"{path}: methods.{method}.params"):
            if not key.startswith(METHOD_KEYS):
                raise NumclipError(f"{path}: methods.{method}.params.{key}: a method may only change "
                                   "train.* and methods.* keys (data and backbone are shared)")
        methods[method] = spec
    protocol = _mapping(raw.get("protocol"), f"{path}: protocol")
    return Recipe(name=str(raw["name"]), dataset=str(raw["dataset"]),
                  params=_mapping(raw["params"], f"{path}: params"), methods=methods,
                  folds=list(protocol.get("folds", [None])), seeds=list(protocol.get("seeds", [0])))
