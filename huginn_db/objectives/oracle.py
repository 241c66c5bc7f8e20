"""A control, not a training method: full backprop through r iterations with every iteration
supervised toward its intermediate result — on `cups`, iteration t toward where the ball is after
t swaps (after the last swap, the answer) — which only the generator knows.

It separates two readings of a flat depth curve: "the loop has no channel for an intermediate
result" (then this fails too) from "the loop gets no training signal for one" (then this
learns the procedure). Each iteration's state goes through coda and head against its own
labels: the training targets with the answer token replaced by that iteration's ball position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from huginn_db.errors import ConfigError
from huginn_db.objectives.base import LatentRecurrence, seed_of
from huginn_db.objectives.registry import register


@dataclass
class OracleConfig:
    depth: int = 8
    """r: core iterations of every training step, all with gradient, each decoded and supervised."""
    eval_steps: int | None = None
    """Default test-time iterations (None: depth)."""

    def __post_init__(self):
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ValueError(f"eval_steps must be >= 1 or null, got {self.eval_steps}")


@register
class OracleObjective(LatentRecurrence):
    """Iteration t of r trained toward the generator's intermediate answer after t compositions."""

    name = "oracle"
    short = "Oracle"
    color = "tab:olive"
    config = OracleConfig
    compared_by_default = False  # a control: name it in `compare --objectives`

    @property
    def default_num_steps(self) -> int:
        return self.cfg.eval_steps or self.cfg.depth

    def train_batch(self, corpus, batch_size: int, step: int, micro: int, rank: int, world: int, grad_accum: int):
        """The corpus's micro-batch plus `step_target_ids` (B, r, T): iteration t's labels."""
        batch = corpus.train_batch(batch_size, step, micro, rank, world, grad_accum)
        family, tok = getattr(corpus, "family", None), corpus.tokenizer
        if family is None or family.trace("=") is None:
            raise ConfigError("objective oracle needs a reasoning family that knows its intermediate answers (cups)")
        labels = batch["target_ids"].unsqueeze(1).repeat(1, self.cfg.depth, 1)
        # the same problems, as strings: no read of the batch tensors
        for i, (prompt, _) in enumerate(corpus.batch_problems(batch_size, step, micro, rank, world, grad_accum)):
            trace = family.trace(prompt)
            for t in range(self.cfg.depth):  # the answer is predicted at '=', index len(prompt) after BOS
                labels[i, t, len(prompt)] = tok.encode(trace[min(t, len(trace) - 1)])[0]
        return {**batch, "step_target_ids": labels}

    def loss(self, model, batch, step: int, slot: int = 0):
        """A batch without step labels (a plain corpus batch: FLOP probes) trains every iteration
        toward the final targets."""
        r, ids = self.cfg.depth, batch["input_ids"]
        g = torch.Generator(device=ids.device).manual_seed(seed_of(self.seed, slot, 3))
        w = batch["loss_weight"]
        labels = batch.get("step_target_ids")
        labels = batch["target_ids"][:, None].expand(-1, r, -1) if labels is None else labels
        ce = model(ids, num_steps=r, num_grad_steps=r, generator=g, step_labels=labels)
        return (ce * w[:, None]).sum() / (r * w.sum()).clamp(min=1), {"r": r, "no_grad_iters": 0, "grad_iters": r}

    @staticmethod
    def core_iterations(cfg: OracleConfig, r: int | None = None) -> tuple[float, float]:
        return float(cfg.depth), 0.0

    @staticmethod
    def saved_core_iterations(cfg: OracleConfig) -> int:
        return cfg.depth

    @staticmethod
    def grad_decodes(cfg: OracleConfig, r: float | None = None) -> float:
        return float(cfg.depth)  # coda + head after every iteration

    @classmethod
    def grad_readouts(cls, cfg: OracleConfig, r: float | None = None) -> float:
        return 0.0

    @staticmethod
    def draw_iterations(cfg: OracleConfig, step: int, seed: int = 0) -> int:
        return cfg.depth
