"""Data: one manifest format, the sources that fill it, validation, splits and a torch Dataset.

The Dataset names are loaded lazily so that ingesting data does not import torch.
"""

from numclip.data.images import load_image
from numclip.data.incoming import read_drop, read_drops
from numclip.data.ingest import IngestReport, ingest
from numclip.data.manifest import SPLITS, Candidate, Manifest, ManifestRow, read_manifest, write_manifest
from numclip.data.sources import read_folder, read_listfile, read_source, read_table
from numclip.data.splits import assign_splits
from numclip.data.synthetic import generate_synthetic
from numclip.data.tables import Reject, write_rejects
from numclip.data.validate import validate

__all__ = ["SPLITS", "Candidate", "ImageRankDataset", "IngestReport", "Manifest", "ManifestRow",
           "Reject", "assign_splits", "generate_synthetic", "ingest", "load_image", "read_drop",
           "read_drops", "read_folder", "read_listfile", "read_manifest", "read_source", "read_table",
           "validate", "write_manifest", "write_rejects"]


def __getattr__(name: str):
    if name == "ImageRankDataset":
        from numclip.data import dataset
        return getattr(dataset, name)
    raise AttributeError(f"module 'numclip.data' has no attribute '{name}'")
