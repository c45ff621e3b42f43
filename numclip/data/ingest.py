"""The ingest stage: any source -> validated, split manifest, with every rejected row written down.

The rejects file is always written first (header even when empty), so a failed ingest still tells
the user which rows were bad and why; the manifest is written only when the data passes the checks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from numclip.atomic import write_csv
from numclip.config import DataConfig
from numclip.data.manifest import SPLITS, Manifest, write_manifest
from numclip.data.sources import read_source
from numclip.data.splits import assign_splits
from numclip.data.validate import Reject, validate
from numclip.errors import NumclipError


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

    def summary(self) -> str:
        splits = ", ".join(f"{s} {self.split_counts[s]}" for s in SPLITS)
        sizes = self.label_counts.values()
        text = (f"Ingested {self.n_total - self.n_rejected} of {self.n_total} rows from the "
                f"{self.source} source into {self.manifest} ({splits}); {self.num_ranks} ranks with "
                f"{min(sizes)} to {max(sizes)} images each. {self.n_rejected} rows rejected "
                f"(reasons in {self.rejects}).")
        empty = [str(k) for k, n in self.label_counts.items() if n == 0]
        if empty:
            text += f" Ranks with no images: {', '.join(empty)}."
        return text


def write_rejects(rejects: list[Reject], path: str | Path) -> None:
    write_csv(path, ["source_row", "path", "label", "reason"],
              ([r.source_row, r.path, r.label, r.reason] for r in rejects))


def ingest(cfg: DataConfig) -> IngestReport:
    """read_source -> validate -> assign_splits -> manifest; NumclipError if too much is rejected."""
    candidates, images_root = read_source(cfg)
    total = len(candidates)
    if total == 0:
        where = cfg.path or ", ".join(cfg.split_paths.values()) or cfg.synthetic.output_dir
        raise NumclipError(f"ingest: the {cfg.source} source ({where}) has no rows")
    rows, rejects = validate(candidates, images_root, cfg.num_ranks, cfg.verify_images)
    write_rejects(rejects, cfg.rejects)
    if len(rejects) / total > cfg.max_reject_fraction:
        raise NumclipError(
            f"ingest: {len(rejects)} of {total} rows rejected ({len(rejects) / total:.1%} > "
            f"max_reject_fraction {cfg.max_reject_fraction:.1%}); see {cfg.rejects} for each row "
            "and reason")
    manifest = Manifest(rows=assign_splits(rows, cfg.split), images_root=images_root,
                        num_ranks=cfg.num_ranks)
    counts = manifest.counts()
    for split in SPLITS:
        if counts[split] == 0:
            raise NumclipError(
                f"ingest: split '{split}' is empty ({', '.join(f'{s} {counts[s]}' for s in SPLITS)}); "
                "give the source rows in every split, or no splits at all so data.split fractions "
                f"assign them (labels with fewer than 3 images stay in train)")
    write_manifest(manifest, cfg.manifest)
    labels = Counter(r.label for r in manifest.rows)
    return IngestReport(source=cfg.source, num_ranks=cfg.num_ranks, n_total=total,
                        n_rejected=len(rejects), split_counts=counts,
                        label_counts={k: labels.get(k, 0) for k in range(cfg.num_ranks)},
                        manifest=Path(cfg.manifest), rejects=Path(cfg.rejects))
