"""The ingest stage: any source plus its data drops -> validated, split manifest, with every rejected
row written down.

The rejects file is always written first (header even when empty), so a failed ingest still tells
the user which rows were bad and why; the manifest is written only when the data passes the checks.
The base source and each drop in `data.incoming` are validated and split separately, so rows that
arrive later never move an existing row between splits; their roots are merged only at the end.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from numclip.config import DataConfig
from numclip.core.errors import NumclipError
from numclip.data.incoming import common_root, read_drops, rebase
from numclip.data.manifest import (
    SPLITS,
    Candidate,
    Manifest,
    ManifestRow,
    write_manifest,
)
from numclip.data.sources import read_source
from numclip.data.splits import assign_splits, select_fold
from numclip.data.tables import Reject, write_rejects
from numclip.data.validate import validate


@dataclass
class IngestReport:
    source: str
    num_ranks: int
    n_total: int
    n_rejected: int
    split_counts: dict[str, int]
    label_counts: dict[int, int]  # every rank 0..K-1, zero included
    manifest: Path
    rejects: Path
    incoming: str = ""
    drop_rows: dict[str, int] = field(default_factory=dict)  # ingested rows per drop, in read order
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        splits = ", ".join(f"{s} {self.split_counts[s]}" for s in SPLITS)
        sizes = self.label_counts.values()
        plus = " plus drops" if self.drop_rows else ""
        text = (f"Ingested {self.n_total - self.n_rejected} of {self.n_total} rows from the "
                f"{self.source} source{plus} into {self.manifest} ({splits}){self._drops_text()}; "
                f"{self.num_ranks} ranks with {min(sizes)} to {max(sizes)} images each. "
                f"{self.n_rejected} rows rejected (reasons in {self.rejects}).")
        empty = [str(k) for k, n in self.label_counts.items() if n == 0]
        if empty:
            text += f" Ranks with no images: {', '.join(empty)}."
        return "\n".join([text, *(f"warning: {w}" for w in self.warnings)])

    def _drops_text(self) -> str:
        """E.g. ', 12 rows from 2 drops in incoming (batch-a, batch-b)'; empty without drops."""
        if not self.drop_rows:
            return ""
        n = len(self.drop_rows)
        return (f", {sum(self.drop_rows.values())} rows from {n} drop{'s' if n != 1 else ''} in "
                f"{self.incoming} ({', '.join(self.drop_rows)})")


@dataclass
class _Part:
    """The base source (name None) or one drop: its rows and the folder their paths are relative to."""

    name: str | None
    root: Path
    candidates: list[Candidate]
    rows: list[ManifestRow] = field(default_factory=list)


def _read_parts(cfg: DataConfig) -> list[_Part]:
    candidates, images_root = read_source(cfg)
    if cfg.fold is not None:
        candidates = select_fold(candidates, cfg.fold)
    drops = read_drops(cfg.incoming)
    parts = [_Part(None, images_root, candidates)]
    parts += [_Part(d.name, d.folder, d.candidates) for d in drops]
    if not any(p.candidates for p in parts):
        where = cfg.path or ", ".join(cfg.split_paths.values()) or cfg.synthetic.output_dir
        also = f" and the drops in {cfg.incoming}" if drops else ""
        raise NumclipError(f"ingest: the {cfg.source} source ({where}){also} has no rows")
    return parts


def _validate(parts: list[_Part], cfg: DataConfig) -> list[Reject]:
    """Validate each part against its own root; an image already ingested by an earlier part (roots
    that overlap) is rejected as a duplicate, so it cannot sit in two splits at once."""
    rejects: list[Reject] = []
    seen: dict[str, str] = {}  # absolute path -> source_row of its first occurrence
    for part in parts:
        rows, bad = validate(part.candidates, part.root, cfg.num_ranks, cfg.verify_images)
        part.rows = []
        for r in rows:
            where = os.path.join(part.root, r.path)
            if where in seen:
                bad.append(Reject(r.source_row, r.path, str(r.label),
                                  f"duplicate path (first at {seen[where]})"))
            else:
                seen[where] = r.source_row
                part.rows.append(r)
        rejects += bad
    return rejects


def _num_ranks_hint(rejects: list[Reject], cfg: DataConfig) -> str:
    """For rows rejected only because K is too small: the data.num_ranks that would keep them."""
    outside = (re.fullmatch(rf"label (\d+) outside \[0, {cfg.num_ranks}\)", r.reason) for r in rejects)
    high = [int(m.group(1)) for m in outside if m]
    if not high:
        return ""
    return (f"{len(high)} rows have labels above {cfg.num_ranks - 1} (up to {max(high)}): if those are "
            f"ranks too, set data.num_ranks: {max(high) + 1}")


def _check_rejects(rejects: list[Reject], total: int, cfg: DataConfig) -> None:
    if len(rejects) / total > cfg.max_reject_fraction:
        hint = _num_ranks_hint(rejects, cfg)
        raise NumclipError(
            f"ingest: {len(rejects)} of {total} rows rejected ({len(rejects) / total:.1%} > "
            f"max_reject_fraction {cfg.max_reject_fraction:.1%}); see {cfg.rejects} for each row "
            "and reason" + (f"; {hint}" if hint else ""))


def _split(part: _Part, cfg: DataConfig) -> list[ManifestRow]:
    """Splits of one part alone, so adding a drop never moves a row of the base or an earlier drop."""
    try:
        return assign_splits(part.rows, cfg.split)
    except NumclipError as e:
        if part.name is None:
            raise
        raise NumclipError(f"drop '{part.name}' in {cfg.incoming}: {e}") from None


def _manifest(parts: list[_Part], cfg: DataConfig) -> Manifest:
    """Split each part, then put every row under one images root (the base root when no drops)."""
    split = [_split(p, cfg) for p in parts]
    if len(parts) == 1:
        return Manifest(rows=split[0], images_root=parts[0].root, num_ranks=cfg.num_ranks)
    root = common_root([p.root for p in parts])
    rows = [r for p, part_rows in zip(parts, split) for r in rebase(part_rows, p.root, root)]
    return Manifest(rows=rows, images_root=root, num_ranks=cfg.num_ranks)


def _check_splits(counts: dict[str, int]) -> None:
    for split in SPLITS:
        if counts[split] == 0:
            raise NumclipError(
                f"ingest: split '{split}' is empty ({', '.join(f'{s} {counts[s]}' for s in SPLITS)}); "
                "give the source rows in every split, or no splits at all so data.split fractions "
                f"assign them (labels with fewer than 3 images stay in train)")


def unwatched_inputs(cfg: DataConfig) -> list[str]:
    """The source's files and folders that lie outside data.root, which DVC watches: a change to one
    of them would not rerun the pipeline."""
    if cfg.source == "synthetic":
        return []
    inputs = [cfg.path, *cfg.split_paths.values(), cfg.images_root]
    root = Path(cfg.root).resolve()
    return [p for p in inputs if p is not None and not Path(p).resolve().is_relative_to(root)]


def ingest(cfg: DataConfig) -> IngestReport:
    """read_source + drops -> validate -> assign_splits per part -> manifest; NumclipError if too much
    is rejected."""
    if cfg.source != "synthetic":  # a stage output of ingest whatever the source (DVC needs it to exist)
        Path(cfg.synthetic.output_dir).mkdir(parents=True, exist_ok=True)
    parts = _read_parts(cfg)
    total = sum(len(p.candidates) for p in parts)
    rejects = _validate(parts, cfg)
    write_rejects(rejects, cfg.rejects)
    _check_rejects(rejects, total, cfg)
    manifest = _manifest(parts, cfg)
    counts = manifest.counts()
    _check_splits(counts)
    write_manifest(manifest, cfg.manifest)
    labels = Counter(r.label for r in manifest.rows)
    return IngestReport(source=cfg.source, num_ranks=cfg.num_ranks, n_total=total,
                        n_rejected=len(rejects), split_counts=counts,
                        label_counts={k: labels.get(k, 0) for k in range(cfg.num_ranks)},
                        manifest=Path(cfg.manifest), rejects=Path(cfg.rejects), incoming=cfg.incoming,
                        drop_rows={p.name: len(p.rows) for p in parts if p.name is not None},
                        warnings=_warnings(rejects, cfg))


def _warnings(rejects: list[Reject], cfg: DataConfig) -> list[str]:
    warnings = [f"{p} lies outside data.root ({cfg.root}), so DVC will not see it change: set data.root "
                "to the folder that holds it" for p in unwatched_inputs(cfg)]
    hint = _num_ranks_hint(rejects, cfg)
    return warnings + ([hint] if hint else [])
