"""The layer contract and the pipeline's code dependencies, checked from the sources.

- A package imports only packages of lower layers (peers in one layer do not import each other).
- A stage module never imports another stage.
- Each dvc.yaml stage lists, as deps, every file of the package that its command may run, so a code
  change always makes `dvc status` report the stages it affects.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from numclip.core.fingerprint import PACKAGE_DIR, code_fingerprint, import_closure, imported_modules

REPO = PACKAGE_DIR.parent

# Lowest first. A module may import its own package and any package of a lower layer.
LAYERS: list[list[str]] = [
    ["core"],
    ["config"],
    ["data", "losses"],
    ["kernels", "importers"],
    ["models"],
    ["evaluation"],
    ["training", "counting"],
    ["stages"],
    ["protocols", "commands"],
    ["cli"],
    ["warm"],
    ["__main__"],
]
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out.append((".".join(parts), path))
    return out


def test_every_package_has_a_layer():
    packages = {_package(m) for m, _ in _modules()} - {""}
    assert packages <= set(RANK), f"put {sorted(packages - set(RANK))} in LAYERS"


def test_no_upward_or_sideways_import():
    bad = []
    for module, path in _modules():
        own = _package(module)
        if not own:
            continue  # numclip/__init__.py: the version only
        for imported in imported_modules(path):
            other = _package(imported)
            if other and other != own and RANK[other] >= RANK[own]:
                bad.append(f"{module} imports {imported} ({own} is layer {RANK[own]}, {other} is {RANK[other]})")
    assert not bad, "\n".join(bad)


def test_a_stage_never_imports_another_stage():
    bad = [f"{module} imports {imported}"
           for module, path in _modules() if module.startswith("numclip.stages.")
           for imported in imported_modules(path)
           if imported.startswith("numclip.stages.") and imported != module]
    assert not bad, "\n".join(bad)


def _dvc_stages() -> dict[str, dict]:
    """dvc.yaml's stage bodies (a foreach/matrix group's `do`/body), by name."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: body.get("do", body) for name, body in stages.items()}


def _stage_module(cmd: str) -> str:
    argv = [a for a in shlex.split(cmd) if a != "--warm"]  # the warm launcher relays; it computes nothing
    assert argv[0] == "numclip", cmd
    return f"numclip.stages.{argv[1]}"


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(_dvc_stages()))
def test_dvc_deps_cover_the_code_the_stage_runs(stage):
    body = _dvc_stages()[stage]
    deps = [d for d in body["deps"] if isinstance(d, str) and "${" not in d]
    closure = {*import_closure(_stage_module(body["cmd"])), PACKAGE_DIR / "cli.py"}  # run through the CLI
    missing = sorted(p.relative_to(REPO).as_posix() for p in closure if not _covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage} runs {missing} but does not list them in deps"


def test_every_stage_module_is_a_dvc_stage():
    """A stage module that no dvc.yaml stage runs is dead code (or a missing stage)."""
    in_dvc = {_stage_module(body["cmd"]) for body in _dvc_stages().values()}
    modules = {m for m, _ in _modules() if m.startswith("numclip.stages.")}
    assert modules == in_dvc


def test_the_closure_follows_imports_and_the_fingerprint_follows_the_code(tmp_path, monkeypatch):
    closure = {p.relative_to(PACKAGE_DIR).as_posix() for p in import_closure("numclip.stages.evaluate")}
    assert {"models/readouts.py", "evaluation/metrics.py", "config/paths.py", "models/__init__.py"} <= closure
    assert "stages/train.py" not in closure and "training/resume.py" not in closure
    assert code_fingerprint("numclip.models.prompts") == code_fingerprint("numclip.models.prompts")
    assert code_fingerprint("numclip.models.prompts") != code_fingerprint("numclip.losses.ranking")


def test_one_image_suffix_set_and_one_csv_reader():
    """Ingest, importers, predict and CountBench agree on what an image is, and read CSV one way."""
    for _, path in _modules():
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(PACKAGE_DIR).as_posix()
        if rel != "data/sources.py":
            assert '".jpeg"' not in text and '".webp"' not in text, f"{rel} lists image suffixes of its own"
        if rel != "data/tables.py":
            assert "csv.reader(" not in text, f"{rel} reads CSV by itself"
