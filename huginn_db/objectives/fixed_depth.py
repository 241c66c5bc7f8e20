"""Controls for the one-pass objectives: the looped model trained at one fixed depth r.

`depth: r` with `backprop_depth: null` is full backprop through time at a fixed r (k = r, the
most a step can learn from r iterations, at r times a one-pass step's core cost); `depth: 1`
is a fixed-depth model (one core pass, no loop during training) whose test-time iterations
the evaluation can still vary. Inference is the latent recurrence, as for BPTT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from huginn_db.objectives.base import LatentRecurrence, seed_of
from huginn_db.objectives.registry import register


@dataclass
class FixedDepthConfig:
    depth: int = 8
    """r: core iterations of every training step (1: a fixed-depth model)."""
    backprop_depth: int | None = None
    """k: the last k of them get gradients (None: all r — full BPTT)."""
    eval_steps: int | None = None
    """Default test-time iterations (None: depth)."""

    def __post_init__(self):
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.backprop_depth is not None and not 1 <= self.backprop_depth <= self.depth:
            raise ValueError(f"backprop_depth={self.backprop_depth} must be in 1..depth={self.depth} (or null: all)")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ValueError(f"eval_steps must be >= 1 or null, got {self.eval_steps}")

    @property
    def grad_iterations(self) -> int:
        return self.depth if self.backprop_depth is None else self.backprop_depth


@register
class FixedDepthObjective(LatentRecurrence):
    """The looped model at a fixed training depth r, gradients through the last k (default all)."""

    name = "fixed_depth"
    short = "Fixed-r"
    color = "tab:green"
    config = FixedDepthConfig
    compared_by_default = False  # a control: name it in `compare --objectives`

    @property
    def default_num_steps(self) -> int:
        return self.cfg.eval_steps or self.cfg.depth

    def loss(self, model, batch, step: int, slot: int = 0):
        r, k = self.cfg.depth, self.cfg.grad_iterations
        g = torch.Generator(device=batch["input_ids"].device).manual_seed(seed_of(self.seed, slot, 3))
        w = batch["loss_weight"]
        ce = model(batch["input_ids"], num_steps=r, num_grad_steps=k, generator=g, labels=batch["target_ids"]) * w
        return ce.sum() / w.sum().clamp(min=1), {"r": r, "no_grad_iters": r - k, "grad_iters": k}

    @staticmethod
    def core_iterations(cfg: FixedDepthConfig, r: int | None = None) -> tuple[float, float]:
        k = cfg.grad_iterations
        return float(k), float(cfg.depth - k)

    @staticmethod
    def saved_core_iterations(cfg: FixedDepthConfig) -> int:
        return cfg.grad_iterations

    @staticmethod
    def draw_iterations(cfg: FixedDepthConfig, step: int, seed: int = 0) -> int:
        return cfg.depth
