"""`numclip init`: look at a dataset (a folder, a table or a list file), then write the params.yaml
that runs it through `dvc repro` with no further edit.

It reads the data the way ingest will (the same readers and checks), so what it reports is what
ingest will find: the labels and K, images per rank, image sizes and a sample of unreadable files.
The training budget is sized to the data: the tiny backbone needs a number of optimiser *steps*, not
epochs, to learn a language prior, so small datasets get more epochs. Results of the previous data
are cleared, so `dvc metrics show` and `dvc plots show` then show this dataset's only.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Optional

import yaml
from PIL import Image

from numclip.config import TASK_PRESETS, DataConfig, Params, load_params, parse_override, validate_params
from numclip.config.params_file import dump_document, load_document, set_key
from numclip.config.paths import output_paths
from numclip.core.atomic import write_text
from numclip.core.errors import NumclipError
from numclip.data.manifest import SPLITS
from numclip.data.sources import read_source
from numclip.data.validate import as_int, validate
from numclip.models.concepts import concept_bins

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
# Optimiser steps that gave the tiny backbone its prior on the embedded data (10 epochs x 33 steps
# of 64 reached 0.76 zero-shot accuracy), and that trained the methods there (8 x 33).
PRETRAIN_STEPS = 330
TRAIN_STEPS = 260
MAX_EPOCHS = 200
SIZE_SAMPLE = 200  # images opened for the size statistics
SHOWN_REJECTS = 5


@dataclass
class Survey:
    """What ingest will find in the data, before anything is written."""

    source: str
    path: str
    root: str
    n_rows: int
    label_counts: dict[int, int]  # every rank 0..K-1
    split_counts: dict[str, int]  # rows the source already assigns to a split
    sizes: list[tuple[int, int]]  # (width, height) of a sample
    rejects: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def num_ranks(self) -> int:
        return len(self.label_counts)

    def n_train(self, train_fraction: float) -> int:
        """Training rows: the source's own train split, else data.split's share of the valid rows."""
        return self.split_counts.get("train") or round(train_fraction * sum(self.label_counts.values()))

    def summary(self) -> str:
        counts = self.label_counts.values()
        lines = [f"{self.path}: {self.source} source, {self.n_rows} images, labels 0..{self.num_ranks - 1} "
                 f"(K = {self.num_ranks}), {min(counts)} to {max(counts)} images per rank",
                 "  per rank: " + ", ".join(f"{k}: {n}" for k, n in self.label_counts.items())]
        if self.split_counts:
            lines.append("  splits given: " + ", ".join(f"{s} {n}" for s, n in self.split_counts.items()))
        if self.sizes:
            w, h = [s[0] for s in self.sizes], [s[1] for s in self.sizes]
            lines.append(f"  image sizes (sample of {len(self.sizes)}): width {min(w)}..{max(w)} "
                         f"(median {median(w):g}), height {min(h)}..{max(h)} (median {median(h):g})")
        if self.rejects:
            lines.append(f"  {len(self.rejects)} rows ingest will reject, e.g.:")
            lines += [f"    {p}: {reason}" for p, reason in self.rejects[:SHOWN_REJECTS]]
        return "\n".join(lines)


def detect_source(path: Path) -> str:
    if path.is_dir():
        return "folder"
    if path.suffix.lower() in TABLE_SUFFIXES:
        return "table"
    if path.is_file():
        return "listfile"
    raise NumclipError(f"numclip init: {path} is neither a folder nor a file")


def _relative(path: Path) -> str:
    """The path as params.yaml should hold it: relative to the project when inside it."""
    resolved = path.resolve()
    return resolved.relative_to(Path.cwd()).as_posix() if resolved.is_relative_to(Path.cwd()) else str(resolved)


def _sizes(rows, root: Path) -> list[tuple[int, int]]:
    step = max(1, len(rows) // SIZE_SAMPLE)
    sizes = []
    for row in rows[::step][:SIZE_SAMPLE]:
        with Image.open(root / row.path) as im:  # the header only: no decode
            sizes.append(im.size)
    return sizes


def survey(path: str | Path, source: Optional[str] = None) -> Survey:
    """Read the data as ingest will and describe it; NumclipError when no row has an integer label."""
    path = Path(path)
    if not path.exists():
        raise NumclipError(f"numclip init: {path} does not exist")
    source = source or detect_source(path)
    candidates, images_root = read_source(DataConfig(source=source, path=str(path)))
    labels = [n for n in (as_int(c.label) for c in candidates) if n is not None and n >= 0]
    if not labels:
        shown = ", ".join(sorted({str(c.label) for c in candidates})[:5]) or "none"
        raise NumclipError(f"numclip init: {path} has no row with an integer label >= 0 (labels seen: "
                           f"{shown}); labels are ranks 0..K-1 (folder layout: <root>/<label>/image)")
    k = max(labels) + 1
    rows, rejects = validate(candidates, images_root, max(k, 2), verify_images=True)
    counts = Counter(r.label for r in rows)
    splits = Counter(r.split for r in rows if r.split)
    root = images_root if source == "folder" else _common_parent(path.resolve().parent, images_root)
    if Path.cwd().resolve().is_relative_to(root):
        raise NumclipError(
            f"numclip init: the data's folder {root} holds this project, so DVC would watch the "
            "pipeline's own outputs as data: put the images (and their table) in a folder of their own")
    return Survey(source=source, path=_relative(path), root=_relative(root), n_rows=len(candidates),
                  label_counts={r: counts.get(r, 0) for r in range(k)},
                  split_counts={s: splits[s] for s in SPLITS if splits[s]},
                  sizes=_sizes(rows, images_root), rejects=[(r.path, r.reason) for r in rejects])


def _common_parent(a: Path, b: Path) -> Path:
    a, b = a.resolve(), b.resolve()
    while not b.is_relative_to(a):
        a = a.parent
    return a


def epochs_for(steps: int, n_train: int, batch_size: int) -> int:
    """Epochs that give about `steps` optimiser steps, at least one."""
    per_epoch = max(1, math.ceil(n_train / batch_size))
    return min(MAX_EPOCHS, max(1, math.ceil(steps / per_epoch)))


@dataclass
class InitReport:
    survey: Survey
    params_file: Path
    settings: dict[str, Any]
    removed: list[str]
    notes: list[str]

    def summary(self) -> str:
        lines = [self.survey.summary(), f"wrote {self.params_file} (keys left null follow the task preset):"]
        lines += [f"  {k}: {v}" for k, v in self.settings.items() if v not in (None, {}, 0)]
        lines += [f"note: {n}" for n in self.notes]
        if self.removed:
            lines.append(f"cleared the previous data's results: {', '.join(self.removed)}")
        lines.append("next: dvc repro   (or `numclip run` without DVC); then numclip predict <images> "
                     "--model models/<method>.safetensors")
        return "\n".join(lines)


def _settings(found: Survey, task: str, rank_words: Optional[list[str]], template: Optional[str],
              base: Params) -> tuple[dict[str, Any], list[str]]:
    """The keys init writes: the source, K, the task preset and the budget."""
    notes = []
    n_train = found.n_train(base.data.split.train)
    settings: dict[str, Any] = {
        "data.source": found.source, "data.path": found.path, "data.root": found.root,
        "data.split_paths": {}, "data.images_root": None, "data.num_ranks": found.num_ranks,
        "task.preset": task, "task.rank_words": rank_words, "task.rank_words_file": None,
        "task.zeroshot_template": template, "task.concepts.preset": None, "task.concepts.edges": None,
        "task.concepts.names": None, "task.concepts.label_shift": 0,
        "pretrain.counting.weight": None,
        "comparison.backbones": ["plain"] if TASK_PRESETS[task].counts else [],
        "pretrain.epochs": epochs_for(PRETRAIN_STEPS, n_train, base.pretrain.batch_size),
        "train.epochs": epochs_for(TRAIN_STEPS, n_train, base.train.batch_size),
    }
    if rejected := len(found.rejects) / max(found.n_rows, 1):
        allowed = base.data.max_reject_fraction
        if rejected > allowed:
            notes.append(f"{rejected:.1%} of rows will be rejected, more than data.max_reject_fraction "
                         f"({allowed:.0%}): ingest will stop; fix them or raise that key")
    return settings, notes


def _validated(doc: Any, where: Path) -> Params:
    try:
        return validate_params(yaml.safe_load(dump_document(doc)), f"the params init would write to {where}")
    except NumclipError as e:
        raise NumclipError(f"numclip init: {e}") from None


def clear_results(previous: Params, keep: list[Path]) -> list[str]:
    """Remove the previous data's outputs inside the project (never a path holding `keep`) and dvc.lock."""
    project = Path.cwd().resolve()
    removed = []
    for name in [*output_paths(previous), "dvc.lock"]:
        path = Path(name).resolve()
        if not path.exists() or not path.is_relative_to(project) or path == project:
            continue
        if any(k.is_relative_to(path) for k in keep):
            continue
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        removed.append(name)
    return removed


def init_project(data: str | Path, task: str = "generic", source: Optional[str] = None,
                 rank_words: Optional[list[str]] = None, template: Optional[str] = None,
                 params_file: str | Path = "params.yaml", overrides: Optional[list[str]] = None,
                 keep_results: bool = False) -> InitReport:
    """Survey `data`, write params_file for it (keeping its comments and its other keys), clear the
    previous results; the params are validated before anything is written."""
    if task not in TASK_PRESETS:
        raise NumclipError(f"numclip init: unknown task '{task}' (known: {', '.join(TASK_PRESETS)})")
    params_file = Path(params_file)
    try:
        previous = load_params(params_file if params_file.exists() else None)
    except NumclipError:  # a broken params file is what init replaces: clear the default outputs
        previous = load_params(None)
    found = survey(data, source)
    settings, notes = _settings(found, task, rank_words, template, previous)
    for text in overrides or []:
        keys, value = parse_override(text)
        settings[".".join(keys)] = value
    doc = load_document(params_file)
    for key, value in settings.items():
        set_key(doc, key.split("."), value)
    params = _validated(doc, params_file)
    try:
        concept_bins(params)
    except NumclipError as e:  # e.g. the counting bins need K >= 8: one concept per rank instead
        settings["task.concepts.preset"] = "levels"
        set_key(doc, ["task", "concepts", "preset"], "levels")
        notes.append(f"{e}: NumCLIP gets one concept per rank instead (task.concepts.preset: levels)")
        _validated(doc, params_file)
    keep = [Path(found.path).resolve(), Path(found.root).resolve()]
    removed = [] if keep_results else clear_results(previous, keep)
    write_text(params_file, dump_document(doc))
    return InitReport(found, params_file, settings, removed, notes)
