"""Mixtures of prepared sets (a blend): which set, and which of its samples, a training sample is.

Sample i of the run's index line (see huginn_db.data.text) goes to set s = pattern[i % P] and is
that set's k-th sample, k = (i // P) · count[s] + (the number of earlier positions of s in the
pattern). The pattern is fixed by the weights: position p goes to the set furthest behind its
share w_s · (p + 1) (Megatron's blending rule, on one period of P samples instead of the whole
run), so every prefix of the pattern is within one sample of the weights, and the map is a pure
function of i: a resume needs nothing but the step. Each set then orders its own windows by
epochs of its own (a small set repeats sooner than a large one, as a blend with weights above
its share of tokens means to).
"""

from __future__ import annotations

import numpy as np

PERIOD = 10_000
"""Samples in one period of the pattern: weights are honoured to 1/PERIOD."""


class Blend:
    """sample index → (set, sample of that set) for sets weighted `weights` (any positive scale)."""

    def __init__(self, weights: list[float], period: int = PERIOD):
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or len(w) == 0 or not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ValueError(f"mixture weights must be positive numbers, got {list(weights)}")
        w = w / w.sum()
        pattern = np.empty(period, dtype=np.int64)
        rank = np.empty(period, dtype=np.int64)
        taken = np.zeros(len(w), dtype=np.int64)
        for p in range(period):
            s = int(np.argmax(w * (p + 1) - taken))  # ties: the lower set index
            pattern[p], rank[p] = s, taken[s]
            taken[s] += 1
        if np.any(taken == 0):
            small = [float(x) for x in w[taken == 0]]
            raise ValueError(f"mixture weights {small} are below 1/{period} of the total; raise them or drop the set")
        self.weights, self.period = w, period
        self.pattern, self.rank, self.counts = pattern, rank, taken

    def __call__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(set, sample of that set) for each global sample index in `idx`."""
        idx = np.asarray(idx, dtype=np.int64)
        q, p = np.divmod(idx, self.period)
        s = self.pattern[p]
        return s, q * self.counts[s] + self.rank[p]
