"""Inference over a dataset, ordinal metrics, learned-nothing diagnosis and figures."""
