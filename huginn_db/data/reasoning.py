"""The embedded reasoning benchmark: task families (huginn_db.data.families) as a training
stream and fixed test sets, with a character tokenizer and exact-match scoring.

Nothing is downloaded; a training batch is a pure function of (seed, global micro-batch slot)
and a test set of (family config, test_seed, difficulty) — not of the run seed, so every seed of
a study is scored on the same problems. Train on `train_difficulties`, test on
`test_difficulties` (by default harder ones too): extra test-time iterations have something
to buy only past the training depth.

Difficulty counts compositions (hops, operations, swaps); difficulty 0 — a single read-off,
such as querying a chain's root — may be trained on as a warm-up but is never a benchmark
difficulty (a one-step problem is shallow by definition).

Sequence layout: BOS + prompt + answer + EOS. The loss covers the answer and EOS predictions,
plus the prompt tokens at `prompt_loss_weight` (the answer alone is a few tokens per sequence).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from huginn_db.data.families import FAMILIES, ChainConfig, CupsConfig, JsonlConfig, ModSumConfig, PermConfig
from huginn_db.tokenizer import ALPHABET, SPECIALS, CharTokenizer, until_eos  # noqa: F401 (re-exported)


@dataclass
class ReasoningConfig:
    """data.reasoning: the embedded, generated benchmark (one task family per run)."""

    family: str = "chain"
    """Task family, a name in huginn_db.data.families.FAMILIES: chain | modsum | cups | perm | jsonl."""
    train_difficulties: list[int] = field(default_factory=lambda: [1, 2, 3])
    """Difficulties the training stream draws from uniformly; 0 (a read-off) is allowed as a warm-up."""
    test_difficulties: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6])
    """Difficulties scored at evaluation, >= 1; harder than trained ones test depth extrapolation."""
    test_examples: int = 200
    """Test problems per difficulty (jsonl: at most this many of the test file's)."""
    test_seed: int = 0
    """The test problems' seed stream, independent of the run seed."""
    prompt_loss_weight: float = 0.0
    """w in loss = (mean CE over answer + EOS + w · mean CE over prompt tokens) / (1 + w)."""
    chain: ChainConfig = field(default_factory=ChainConfig)
    """The chain family's settings (used when family=chain)."""
    modsum: ModSumConfig = field(default_factory=ModSumConfig)
    """The modsum family's settings (used when family=modsum)."""
    cups: CupsConfig = field(default_factory=CupsConfig)
    """The cups family's settings (used when family=cups)."""
    perm: PermConfig = field(default_factory=PermConfig)
    """The perm family's settings (used when family=perm)."""
    jsonl: JsonlConfig = field(default_factory=JsonlConfig)
    """The own-task files (used when family=jsonl)."""

    def __post_init__(self):
        # messages name the bare field; the recipe loader prefixes the section ("data.reasoning.")
        if self.family not in FAMILIES:  # the registry, not a fixed list: families may be added
            raise ValueError(f"family must be one of {'|'.join(FAMILIES)}, got {self.family!r}")
        for key, low in (("train_difficulties", 0), ("test_difficulties", 1)):
            ds = getattr(self, key)
            if not ds or min(ds) < low:
                raise ValueError(
                    f"{key} must be a non-empty list of integers >= {low}, got {ds}"
                    + (
                        " (difficulty 0, no composition at all, is a training warm-up: it fails the "
                        "shortcut audit by construction)"
                        if low
                        else ""
                    )
                )
        if self.test_examples < 1:
            raise ValueError(f"test_examples must be >= 1, got {self.test_examples}")
        if self.test_seed < 0:  # numpy seeds are non-negative
            raise ValueError(f"test_seed must be >= 0, got {self.test_seed}")
        if not self.prompt_loss_weight >= 0:
            raise ValueError(f"prompt_loss_weight must be >= 0, got {self.prompt_loss_weight}")

    def family_config(self):
        return getattr(self, self.family)


def build_family(cfg: ReasoningConfig):
    """The configured family, its difficulties checked against what it can make (ValueError names
    the key; ReasoningConfig has checked its own fields)."""
    family = FAMILIES[cfg.family](cfg.family_config())
    if cfg.family == "jsonl":
        family.check(cfg.train_difficulties, "train")
        family.check(cfg.test_difficulties, "test")
    else:
        family.check(cfg.train_difficulties + cfg.test_difficulties)
    return family


class ReasoningCorpus:
    """Deterministic training stream and fixed test sets of one family."""

    def __init__(self, cfg: ReasoningConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self.family = build_family(cfg)
        self.tokenizer = CharTokenizer(self.family.alphabet())

    def max_length(self, difficulties) -> int:
        """Upper bound on BOS + prompt + answer + EOS tokens for these difficulties."""
        return max(self.family.max_length(int(d)) for d in difficulties) + 2

    @property
    def train_seq_len(self) -> int:
        return self.max_length(self.cfg.train_difficulties) - 1  # inputs are seq[:-1]

    def train_problems(self, n: int, difficulty: int, seed: int | None = None) -> list[tuple[str, str]]:
        """n training-distribution problems of one difficulty from their own stream (audit)."""
        rng = np.random.default_rng([self.seed if seed is None else seed, 2, difficulty])
        return [self.family.sample(rng, difficulty) for _ in range(n)]

    def batch_problems(
        self, batch_size: int, step: int, micro: int = 0, rank: int = 0, world: int = 1, grad_accum: int = 1
    ) -> list[tuple[str, str]]:
        """The (prompt, answer) pairs `train_batch` encodes, in row order."""
        slot = (step * grad_accum + micro) * world + rank
        rng = np.random.default_rng([self.seed, 0, slot])
        out = []
        for _ in range(batch_size):
            d = self.cfg.train_difficulties[rng.integers(len(self.cfg.train_difficulties))]
            out.append(self.family.sample(rng, int(d)))
        return out

    def train_batch(
        self, batch_size: int, step: int, micro: int = 0, rank: int = 0, world: int = 1, grad_accum: int = 1
    ) -> dict[str, torch.Tensor]:
        """Micro-batch `micro` of `step` for data-parallel `rank`: a pure function of the global
        micro-batch slot (step·grad_accum + micro)·world + rank, so 2 ranks × 1 micro-batch see
        exactly the samples of 1 rank × 2 micro-batches (same global batch, same data)."""
        tok, T, w = self.tokenizer, self.train_seq_len, self.cfg.prompt_loss_weight
        ids = torch.full((batch_size, T + 1), tok.pad_id, dtype=torch.long)
        weight = torch.zeros(batch_size, T)
        for i, (prompt, answer) in enumerate(self.batch_problems(batch_size, step, micro, rank, world, grad_accum)):
            p, a = [tok.bos_id] + tok.encode(prompt), tok.encode(answer) + [tok.eos_id]
            ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            weight[i, len(p) - 1 : len(p) + len(a) - 1] = 1.0  # answer + EOS predictions
            if w > 0 and len(p) > 1:  # prompt tokens after BOS, w times the answer's total weight
                weight[i, : len(p) - 1] = w * len(a) / (len(p) - 1)
        return {"input_ids": ids[:, :-1], "target_ids": ids[:, 1:], "loss_weight": weight}

    def test_set(self, examples: int | None = None) -> list[dict]:
        """Fixed held-out problems: `test_examples` per test difficulty, own seed stream."""
        n = examples or self.cfg.test_examples
        return [
            {"difficulty": d, "prompt": p, "answer": a}
            for d in self.cfg.test_difficulties
            for p, a in self.family.test_problems(d, n, self.cfg.test_seed)
        ]


def score(examples: list[dict], generations: list[str]) -> dict[str, float]:
    """Exact-match answer accuracy per difficulty (keys 'd1', 'd2', …) and the mean over them."""
    hits: dict[int, list[bool]] = {}
    for ex, gen in zip(examples, generations, strict=True):
        hits.setdefault(ex["difficulty"], []).append(gen.strip() == ex["answer"])
    acc = {f"d{d}": float(np.mean(h)) for d, h in sorted(hits.items())}
    acc["mean"] = float(np.mean(list(acc.values())))
    return acc
