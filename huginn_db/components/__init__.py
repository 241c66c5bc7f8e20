"""The trainer's parts, each usable alone: optimizer and schedule, the DeepSpeed engine,
distributed helpers, precision and memory probes, the non-finite step guard, checkpoints and
the run directory, metrics."""
