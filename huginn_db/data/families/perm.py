"""`perm`: the S3 word problem — compose d+1 permutations of three items.

    bfae=   →   c        (d = 3 compositions; letters a–f name the six elements of S3)

A state-tracking task: the answer is the product g_1·g_2·…·g_{d+1}, applied left to right.
Each element is uniform and independent, so for d ≥ 1 the product is uniform and independent
of any single element: no position or symbol count beats chance. Unlike `modsum` the
operation does not commute, so the product cannot be read off the histogram of the letters;
only its sign (the parity of the odd elements) can, which is worth 1/3 instead of 1/6.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from huginn_db.data.families.base import GeneratedFamily

ELEMENTS = list(itertools.permutations(range(3)))  # one-line notation; index = letter
LETTERS = "abcdef"


def compose(first: tuple, then: tuple) -> tuple:
    """The permutation `first` followed by `then`."""
    return tuple(then[first[i]] for i in range(len(first)))


@dataclass
class PermConfig:
    """data.reasoning.perm: S3 only; no knobs yet."""


class PermFamily(GeneratedFamily):
    name = "perm"
    config = PermConfig

    def chance(self, difficulty: int) -> float:
        return 1.0 / len(ELEMENTS)

    def alphabet(self) -> str:
        return LETTERS + "="

    def max_length(self, difficulty: int) -> int:
        return difficulty + 1 + 1 + 1

    def sample(self, rng: np.random.Generator, difficulty: int) -> tuple[str, str]:
        word = rng.integers(len(ELEMENTS), size=difficulty + 1).tolist()
        product = ELEMENTS[word[0]]
        for g in word[1:]:
            product = compose(product, ELEMENTS[g])
        return "".join(LETTERS[g] for g in word) + "=", LETTERS[ELEMENTS.index(product)]
