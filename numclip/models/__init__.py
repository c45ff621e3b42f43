"""Backbone factory, prompt learners, the cosine head, and the assembled ordinal model."""
