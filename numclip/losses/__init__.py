"""Loss formulas, one file per family (contrastive, ranking, counting); they know tensors, not params."""
