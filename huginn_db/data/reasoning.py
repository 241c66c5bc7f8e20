"""Embedded reasoning corpus: generated, depth-sensitive tasks with a difficulty knob.

Nothing is downloaded; every example is a pure function of (seed, split, index).

Tasks
  chain  chained variable assignments, arithmetic mod 10, e.g. ``a=3;q=5;b=a+4;c=b*2;c?`` → ``4``.
         difficulty d = number of operations on the path to the queried variable; distractor
         assignments (constants or derived from other variables) are interleaved, so the model
         has to follow the dependency chain, one hop per unit of depth.
  add    multi-digit addition, e.g. ``347+58=`` → ``405``; difficulty = digits of the operands.

Train draws from `train_difficulties`, test from `test_difficulties` (by default harder ones
too), so extra test-time iterations have something to buy.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from huginn_db.tokenizer import until_eos

SPECIALS = ["<pad>", "<bos>", "<eos>"]
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz=;+-*?"
OPS = "+-*="  # "=" is a plain copy: b=a


class CharTokenizer:
    """Character-level tokenizer over the corpus alphabet (45 symbols incl. specials)."""

    name = "reasoning"

    def __init__(self):
        self.itos = SPECIALS + list(ALPHABET)
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} is not in the reasoning alphabet") from None

    def decode(self, ids) -> str:
        return "".join(self.itos[i] for i in until_eos(ids, self.eos_id) if i >= len(SPECIALS))

    def save(self, directory: str | Path) -> None:
        Path(directory, "tokenizer.json").write_text(json.dumps({"type": self.name, "itos": self.itos}))


@dataclass
class ReasoningConfig:
    task: str = "chain"  # chain | add | mix
    train_difficulties: list[int] = field(default_factory=lambda: [1, 2, 3])
    test_difficulties: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    distractors: int = 2  # extra assignments per chain example
    ops: str = "="  # chain operators from "+-*=" (arithmetic mod 10; "=" copies)
    test_examples: int = 200  # per difficulty


def _chain_example(rng: np.random.Generator, d: int, distractors: int, ops: str = OPS) -> tuple[str, str]:
    names = [chr(c) for c in rng.choice(np.arange(ord("a"), ord("z") + 1), d + 1 + distractors, replace=False)]
    chain, extra = names[: d + 1], names[d + 1 :]
    v = int(rng.integers(10))
    stmts = [[f"{chain[0]}={v}"]]  # chain statements in order; distractors slot in between
    for i in range(1, d + 1):
        op, c = ops[rng.integers(len(ops))], int(rng.integers(10))
        v = (v + c if op == "+" else v - c if op == "-" else v * c if op == "*" else v) % 10
        stmts.append([f"{chain[i]}={chain[i - 1]}" + (f"{op}{c}" if op != "=" else "")])
    slot_of: dict[str, int] = {}
    for x in extra:
        slot = int(rng.integers(len(stmts)))  # appended after chain statement `slot`
        if rng.random() < 0.5:  # derived from a variable already defined at that point
            src = chain[: slot + 1] + [y for y, s in slot_of.items() if s <= slot]
            y = src[int(rng.integers(len(src)))]
            op = ops[rng.integers(len(ops))]
            stmts[slot].append(f"{x}={y}" + (f"{op}{int(rng.integers(10))}" if op != "=" else ""))
        else:
            stmts[slot].append(f"{x}={int(rng.integers(10))}")
        slot_of[x] = slot
    body = ";".join(s for group in stmts for s in group)
    return f"{body};{chain[-1]}?", str(v)


def _add_example(rng: np.random.Generator, d: int) -> tuple[str, str]:
    a, b = (int(rng.integers(10 ** (d - 1) if d > 1 else 0, 10**d)) for _ in range(2))
    return f"{a}+{b}=", str(a + b)


class ReasoningCorpus:
    """Deterministic train stream and fixed test set over the configured tasks."""

    def __init__(self, cfg: ReasoningConfig, seed: int):
        if cfg.task not in ("chain", "add", "mix"):
            raise ValueError(f"data.reasoning.task must be chain|add|mix, got {cfg.task!r}")
        if not cfg.ops or set(cfg.ops) - set(OPS):
            raise ValueError(f"data.reasoning.ops must be a non-empty subset of {OPS!r}, got {cfg.ops!r}")
        if not cfg.train_difficulties or min(cfg.train_difficulties + cfg.test_difficulties) < 1:
            raise ValueError("data.reasoning difficulties must be non-empty lists of integers >= 1")
        self.cfg, self.seed = cfg, seed
        self.tokenizer = CharTokenizer()

    def example(self, rng: np.random.Generator, difficulty: int) -> tuple[str, str]:
        task = self.cfg.task if self.cfg.task != "mix" else ("chain", "add")[rng.integers(2)]
        if task == "chain":
            return _chain_example(rng, difficulty, self.cfg.distractors, self.cfg.ops)
        return _add_example(rng, difficulty)

    def max_length(self, difficulties) -> int:
        """Upper bound on BOS + prompt + answer + EOS tokens for these difficulties."""
        d = max(difficulties)
        chain = 4 + 6 * d + 6 * self.cfg.distractors + 2 + 1
        add = 2 * d + 2 + (d + 1)
        longest = {"chain": chain, "add": add, "mix": max(chain, add)}[self.cfg.task]
        return longest + 2

    @property
    def train_seq_len(self) -> int:
        return self.max_length(self.cfg.train_difficulties) - 1  # inputs are seq[:-1]

    def train_batch(self, batch_size: int, step: int, micro: int = 0, rank: int = 0, world: int = 1,
                    grad_accum: int = 1) -> dict[str, torch.Tensor]:
        """Micro-batch `micro` of `step` for data-parallel `rank`: a pure function of the global
        micro-batch slot (step·grad_accum + micro)·world + rank, so 2 ranks × 1 micro-batch see
        exactly the samples of 1 rank × 2 micro-batches (same global batch, same data)."""
        slot = (step * grad_accum + micro) * world + rank
        rng = np.random.default_rng([self.seed, 0, slot])
        tok, T = self.tokenizer, self.train_seq_len
        ids = torch.full((batch_size, T + 1), tok.pad_id, dtype=torch.long)
        mask = torch.zeros(batch_size, T, dtype=torch.bool)
        for i in range(batch_size):
            d = self.cfg.train_difficulties[rng.integers(len(self.cfg.train_difficulties))]
            prompt, answer = self.example(rng, int(d))
            p, a = [tok.bos_id] + tok.encode(prompt), tok.encode(answer) + [tok.eos_id]
            ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            mask[i, len(p) - 1 : len(p) + len(a) - 1] = True  # score answer + EOS predictions only
        return {"input_ids": ids[:, :-1], "target_ids": ids[:, 1:], "loss_mask": mask}

    def test_set(self) -> list[dict]:
        """Fixed held-out problems: `test_examples` per test difficulty, own seed stream."""
        out = []
        for d in self.cfg.test_difficulties:
            rng = np.random.default_rng([self.seed, 1, d])
            for _ in range(self.cfg.test_examples):
                prompt, answer = self.example(rng, d)
                out.append({"difficulty": d, "prompt": prompt, "answer": answer})
        return out

    def max_answer_tokens(self) -> int:
        return max(self.cfg.test_difficulties) + 2 if self.cfg.task != "chain" else 2


def score(examples: list[dict], generations: list[str]) -> dict[str, float]:
    """Exact-match answer accuracy per difficulty (keys 'd1', 'd2', …) and the mean over them."""
    hits: dict[int, list[bool]] = {}
    for ex, gen in zip(examples, generations, strict=True):
        hits.setdefault(ex["difficulty"], []).append(gen.strip() == ex["answer"])
    acc = {f"d{d}": float(np.mean(h)) for d, h in sorted(hits.items())}
    acc["mean"] = float(np.mean(list(acc.values())))
    return acc
