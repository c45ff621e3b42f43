"""The ingest stage: data.* -> the manifest and the rejects report (the work is numclip.data.ingest's,
which `numclip init` shares)."""

from __future__ import annotations

from numclip.config import Params
from numclip.data.ingest import IngestReport, ingest


def run_ingest(params: Params) -> IngestReport:
    return ingest(params.data)
