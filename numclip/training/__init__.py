"""The training machinery: objective, optimisers and schedules, checkpoints and resume, data parallelism."""
