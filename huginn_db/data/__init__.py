"""Training data: the depth benchmark's reasoning families (default) and text corpora through `datasets`."""
