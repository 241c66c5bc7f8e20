"""What the generated families share."""

from __future__ import annotations

import numpy as np


class GeneratedFamily:
    """Shared plumbing of the generated families: the test set is its own seed stream."""

    name = ""

    def __init__(self, cfg):
        self.cfg = cfg

    def test_problems(self, difficulty: int, n: int, seed: int) -> list[tuple[str, str]]:
        # the first n problems of the stream are the same for any n: the audit's larger sample
        # contains the evaluated test set
        rng = np.random.default_rng([seed, 1, difficulty])
        return [self.sample(rng, difficulty) for _ in range(n)]

    def check(self, difficulties: list[int]) -> None:
        """Raise ValueError (naming the data.reasoning key) for difficulties this config cannot make."""

    def trace(self, prompt: str) -> list[str] | None:
        """The answer after each composition of `prompt` (the last one is the answer); None: this
        family does not write its intermediate results down (the oracle control needs them)."""
        return None
