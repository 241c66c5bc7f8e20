"""huginn_db: train recurrent-depth (Huginn-style) LMs by truncated BPTT or DiffusionBlocks."""

__version__ = "0.1.0"
