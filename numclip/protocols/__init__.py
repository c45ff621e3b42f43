"""Evaluation protocols: folds x seeds x a params grid, each run in its own folder, aggregated into
mean +- std tables (the training-set samplers they use live in numclip.data.samplers)."""

from numclip.protocols.aggregate import aggregate, results_markdown, write_results

__all__ = ["aggregate", "results_markdown", "write_results"]
