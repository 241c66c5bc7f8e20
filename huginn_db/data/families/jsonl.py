"""`jsonl`: bring your own task — prompt/answer/difficulty files, one JSON object per line.

    {"prompt": "x=4;y=x+2;?y=", "answer": "1", "difficulty": 1}

Training samples uniformly among the train file's problems of the drawn difficulty; the test
set of difficulty d is the test file's problems of that difficulty, in file order. Masking,
per-difficulty scoring, the lm-eval tasks and the shortcut audit are those of the built-in
families; the character vocabulary is extended by whatever the files use.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class JsonlConfig:
    """data.reasoning.jsonl: a user's own task files (read, and checked, when the family is built)."""

    train: str = ""
    """Path of the training problems (.jsonl); relative paths: recipe dir, then CWD."""
    test: str = ""
    """Path of the test problems (.jsonl); relative paths as for train."""


def read_problems(path: str, key: str) -> dict[int, list[tuple[str, str]]]:
    """{difficulty: [(prompt, answer), ...]} in file order; ValueError naming file and line."""
    if not path:
        raise ValueError(f"data.reasoning.jsonl.{key} is not set: give the path of a .jsonl file")
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"data.reasoning.jsonl.{key}: file not found: {path}")
    out: dict[int, list[tuple[str, str]]] = defaultdict(list)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not a JSON object ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object with prompt, answer, difficulty")
        missing = [k for k in ("prompt", "answer", "difficulty") if k not in row]
        if missing:
            raise ValueError(f"{path}:{n}: missing field '{missing[0]}' (each line needs prompt, answer, difficulty)")
        prompt, answer, d = row["prompt"], row["answer"], row["difficulty"]
        if not isinstance(prompt, str) or not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"{path}:{n}: prompt and answer must be strings and the answer non-empty")
        if answer != answer.strip():
            raise ValueError(f"{path}:{n}: the answer {answer!r} has surrounding whitespace (scoring strips it)")
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"{path}:{n}: difficulty must be an integer >= 1, got {d!r}")
        out[d].append((prompt, answer))
    if not out:
        raise ValueError(f"{path}: no problems (the file is empty)")
    return dict(out)


class JsonlFamily:
    name = "jsonl"
    config = JsonlConfig

    def __init__(self, cfg: JsonlConfig):
        self.cfg = cfg
        self.train = read_problems(cfg.train, "train")
        self.test = read_problems(cfg.test, "test")

    def check(self, difficulties: list[int], split: str = "train") -> None:
        have = self.train if split == "train" else self.test
        missing = [d for d in difficulties if d not in have]
        if missing:
            raise ValueError(
                f"data.reasoning.{split}_difficulties: {getattr(self.cfg, split)} has no problems of "
                f"difficulty {missing[0]} (it has {sorted(have)})"
            )

    def sample(self, rng: np.random.Generator, difficulty: int) -> tuple[str, str]:
        pool = self.train[difficulty]
        return pool[int(rng.integers(len(pool)))]

    def test_problems(self, difficulty: int, n: int, seed: int) -> list[tuple[str, str]]:
        return self.test[difficulty][:n]

    def answers(self, difficulty: int) -> set[str]:
        return {a for split in (self.train, self.test) for _, a in split.get(difficulty, [])}

    def chance(self, difficulty: int) -> float:
        return 1.0 / max(1, len(self.answers(difficulty)))

    def alphabet(self) -> str:
        chars = {c for split in (self.train, self.test) for probs in split.values() for p, a in probs for c in p + a}
        return "".join(sorted(chars))

    def max_length(self, difficulty: int) -> int:
        probs = self.train.get(difficulty, []) + self.test.get(difficulty, [])
        return max((len(p) + len(a) for p, a in probs), default=0)
