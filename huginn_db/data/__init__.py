"""Training data: the embedded reasoning corpus (default) and text corpora through `datasets`."""
