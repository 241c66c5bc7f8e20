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
