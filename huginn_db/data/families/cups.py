"""`cups`: the shell game — where is the ball after d+1 swaps of three cups?

    acba=   →   3        (the ball starts under cup 1; a swaps cups 1↔2, b 1↔3, c 2↔3; d = 3)

State tracking: the answer is the image of cup 1 under the composed swaps, i.e. the action of
S3 on three points, read left to right. A uniformly drawn swap of three cups moves the ball to
each cup with probability 1/3 wherever it was, so the answer is uniform and independent of
any single swap: no position or letter count beats chance. The swaps do not commute, so their
multiset does not tell the answer either (only the parity of their count, which says nothing
about one ball). As in `modsum` and `perm`, difficulty counts compositions: d+1 swaps; d = 0
(one swap, three possible prompts) is a read-off for training, not a benchmark difficulty.
`random_start` writes a random start cup first ("2:acba="); it learned far slower in the
demo's budget, and with it one-swap-more games (d = 1) are a 27-entry table that a naive Bayes
reader half solves. More cups make short games easy to guess (a swap leaves most cups alone):
the audit flags both.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from huginn_db.data.families.base import GeneratedFamily


@dataclass
class CupsConfig:
    """data.reasoning.cups: the shell game."""

    cups: int = 3
    """Cups in the row, 2..7; one move letter per pair of cups (3 cups: a 1↔2, b 1↔3, c 2↔3)."""
    random_start: bool = False
    """The ball starts under a random cup, written first ("2:"); else cup 1."""

    def __post_init__(self):
        if not 2 <= self.cups <= 7:
            raise ValueError(f"cups must be 2..7 (one digit per cup, a letter per pair), got {self.cups}")


class CupsFamily(GeneratedFamily):
    name = "cups"
    config = CupsConfig

    def __init__(self, cfg: CupsConfig):
        super().__init__(cfg)
        self.moves = {
            chr(ord("a") + k): pair for k, pair in enumerate(itertools.combinations(range(1, cfg.cups + 1), 2))
        }

    def chance(self, difficulty: int) -> float:
        return 1.0 / self.cfg.cups

    def alphabet(self) -> str:
        return "123456789" + "".join(self.moves) + ":="

    def max_length(self, difficulty: int) -> int:
        return 2 * self.cfg.random_start + difficulty + 1 + 1 + 1

    def _play(self, start: int, word: str) -> int:
        ball = start
        for m in word:
            i, j = self.moves[m]
            ball = j if ball == i else i if ball == j else ball
        return ball

    def trace(self, prompt: str) -> list[str]:
        """Where the ball is after each swap."""
        start, word = prompt[:-1].split(":") if ":" in prompt else ("1", prompt[:-1])
        return [str(self._play(int(start), word[: t + 1])) for t in range(len(word))]

    def last_statement_value(self, prompt: str) -> str:
        """Where the last swap alone sends the ball from its start (a recency shortcut)."""
        start, word = prompt[:-1].split(":") if ":" in prompt else ("1", prompt[:-1])
        return str(self._play(int(start), word[-1]))

    def sample(self, rng: np.random.Generator, difficulty: int) -> tuple[str, str]:
        start = int(rng.integers(1, self.cfg.cups + 1)) if self.cfg.random_start else 1
        letters = list(self.moves)
        word = [letters[i] for i in rng.integers(len(letters), size=difficulty + 1)]
        ball = self._play(start, word)
        prefix = f"{start}:" if self.cfg.random_start else ""
        return f"{prefix}{''.join(word)}=", str(ball)
