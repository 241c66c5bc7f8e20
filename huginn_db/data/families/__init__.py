"""Task families of the embedded reasoning benchmark.

A family turns (random generator, difficulty) into one problem: a prompt string and its answer.
Problems are generated, never downloaded, so every train batch and test set is a pure function
of its seeds. Each family is built so that one more unit of difficulty needs one more step of
serial computation, and so that no shallow reading of the prompt (a fixed position, the first or
last constant, the most frequent answer or symbol) beats chance: `huginn_db.data.audit` checks
that for every family and difficulty.

    chain   interleaved assignment chains mod p, queried at depth d       (variable binding)
    modsum  d+1 operands summed mod p                                     (serial accumulation)
    cups    the shell game: where the ball is after d swaps of 3 cups       (state tracking)
    perm    composition of d+1 permutations of 3 items, the S3 word problem (state tracking)
    jsonl   a user's own prompt/answer/difficulty files                   (bring your own task)

A family class has `name`, `config` (its dataclass, a section of data.reasoning), and
    sample(rng, d) -> (prompt, answer)     one training problem of difficulty d
    test_problems(d, n, seed) -> [(prompt, answer), ...]
    chance(d) -> float                     accuracy of guessing uniformly among the answers
    max_length(d) -> int                   characters of prompt + answer, an upper bound
    alphabet() -> str                      characters its prompts and answers use
and optionally `last_statement_value(prompt)` (the value the prompt's last statement computes,
a shortcut the audit scores).
"""

from __future__ import annotations

from huginn_db.data.families.chain import ChainConfig, ChainFamily
from huginn_db.data.families.cups import CupsConfig, CupsFamily
from huginn_db.data.families.jsonl import JsonlConfig, JsonlFamily
from huginn_db.data.families.modsum import ModSumConfig, ModSumFamily
from huginn_db.data.families.perm import PermConfig, PermFamily

FAMILIES = {f.name: f for f in (ChainFamily, ModSumFamily, CupsFamily, PermFamily, JsonlFamily)}

__all__ = ["FAMILIES", "ChainConfig", "CupsConfig", "JsonlConfig", "ModSumConfig", "PermConfig"]
