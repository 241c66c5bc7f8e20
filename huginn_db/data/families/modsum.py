"""`modsum`: the sum of d+1 digits mod p (multi-operand modular addition; p=2 is prefix parity).

    3+1+4+0=   →   3        (d = 3 additions, mod 5)

Each operand is uniform and independent, so for d ≥ 1 the answer is independent of any single
operand: no position, first or last constant beats chance. The sum is order-invariant, though,
so a network can also read it off the histogram of the digits without iterating — which is
what this family measures against `perm`, whose operation does not commute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from huginn_db.data.families.base import GeneratedFamily


@dataclass
class ModSumConfig:
    """data.reasoning.modsum: d+1 digits summed mod p."""

    modulus: int = 5
    """p, 2..10: operands and answer are digits 0..p-1 (2: prefix-sum parity)."""

    def __post_init__(self):
        if not 2 <= self.modulus <= 10:
            raise ValueError(f"modulus must be 2..10 (one digit per value), got {self.modulus}")


class ModSumFamily(GeneratedFamily):
    name = "modsum"
    config = ModSumConfig

    def chance(self, difficulty: int) -> float:
        return 1.0 / self.cfg.modulus

    def alphabet(self) -> str:
        return "0123456789+="

    def max_length(self, difficulty: int) -> int:
        return 2 * (difficulty + 1) + 1

    def sample(self, rng: np.random.Generator, difficulty: int) -> tuple[str, str]:
        xs = rng.integers(self.cfg.modulus, size=difficulty + 1)
        return "+".join(map(str, xs.tolist())) + "=", str(int(xs.sum()) % self.cfg.modulus)
