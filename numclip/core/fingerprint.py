"""What code a module runs, and a fingerprint of it: the files of the package it imports, transitively.

The import closure is read from the sources (every `import`, at module level or inside a function),
so it needs no git and imports nothing. dvc.yaml's deps are checked against it (tests), and caches
and checkpoints record the fingerprint, so a code change never reuses what older code produced.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = "numclip"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../numclip


def module_file(module: str) -> Path | None:
    """The source file of a `numclip...` module (its __init__.py for a package); None if there is none."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """The package's modules that `path` imports (`from a import b` counts a.b when b is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] == PACKAGE and module_file(m) is not None}


def _with_parents(module: str) -> list[str]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@lru_cache(maxsize=None)
def import_closure(module: str) -> tuple[Path, ...]:
    """Every file of the package that running `module` may execute, sorted."""
    seen: set[str] = set()
    todo = _with_parents(module)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is not None:
            for imported in imported_modules(path):
                todo.extend(m for m in _with_parents(imported) if m not in seen)
    return tuple(sorted(p for p in map(module_file, seen) if p is not None))


@lru_cache(maxsize=None)
def code_fingerprint(*modules: str) -> str:
    """sha256 of the sources in the modules' import closures (paths relative to the package); read
    once per process, as the closure is (the prototype cache asks once per method)."""
    h = hashlib.sha256()
    for path in sorted({p for m in modules for p in import_closure(m)}):
        h.update(path.relative_to(PACKAGE_DIR.parent).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()
