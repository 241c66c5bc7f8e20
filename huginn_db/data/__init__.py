"""Training data: the embedded reasoning corpus (default) and, later, text corpora."""
