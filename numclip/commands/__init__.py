"""User commands outside the pipeline: init (your data -> params.yaml), predict, bench."""
