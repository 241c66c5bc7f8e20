"""Huginn's truncated backprop through time (SPEC §2): r ~ Poisson-log-normal, r − k
iterations without grad, the last k with grad; inference runs the latent recurrence r times
from a random initial state per position, then coda and head once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from huginn_db.objectives.base import LatentRecurrence, seed_of
from huginn_db.objectives.registry import register


@dataclass
class BPTTConfig:
    mean_recurrence: int = 32
    """r̄: the mean of the training depth law (E[r] = r̄ + 1)."""
    backprop_depth: int = 8
    """k: the last k iterations of a step get gradients (Huginn: 8 of 32)."""
    recurrence_std: float = 0.5
    """s: the standard deviation of the log-normal over τ."""
    eval_steps: int | None = None
    """Default test-time r (None: r̄)."""

    def __post_init__(self):
        if self.mean_recurrence < 1 or self.backprop_depth < 1:
            raise ValueError("mean_recurrence and backprop_depth must be >= 1")
        if self.backprop_depth > self.mean_recurrence:
            raise ValueError(
                f"backprop_depth={self.backprop_depth} exceeds mean_recurrence={self.mean_recurrence}; "
                f"lower backprop_depth (Huginn: 8 of 32)"
            )
        if not self.recurrence_std > 0:
            raise ValueError(f"recurrence_std must be > 0, got {self.recurrence_std}")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ValueError(f"eval_steps must be >= 1 or null, got {self.eval_steps}")


def sample_recurrence(step: int, cfg: BPTTConfig, seed: int = 0) -> int:
    """r = Poisson(e^τ) + 1, τ ~ N(ln r̄ − s²/2, s): mean r̄ + 1, heavy right tail.

    Seeded by (seed, step) only, so every data-parallel rank draws the same r.
    """
    rng = np.random.default_rng([seed, step, 0x5EC])
    s = cfg.recurrence_std
    tau = rng.normal(math.log(cfg.mean_recurrence) - 0.5 * s * s, s)
    return int(rng.poisson(math.exp(tau))) + 1


def recurrence_pmf(cfg: BPTTConfig, r_max: int | None = None, nodes: int = 96) -> np.ndarray:
    """P(r = 1..r_max) for `sample_recurrence`: the Poisson pmf of r − 1 averaged over
    τ ~ N(ln r̄ − s²/2, s) by Gauss–Hermite quadrature (`pmf[i]` is P(r = i + 1))."""
    s = cfg.recurrence_std
    mu = math.log(cfg.mean_recurrence) - 0.5 * s * s
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    lam = np.exp(mu + s * x)
    w = w / w.sum()
    if r_max is None:  # far into the tail: e^τ at τ's +8 sd, plus 10 Poisson sd
        lam_hi = math.exp(mu + 8 * s)
        r_max = int(lam_hi + 10 * math.sqrt(lam_hi)) + 2
    n = np.arange(r_max)[:, None]
    log_p = n * np.log(lam)[None, :] - lam[None, :] - np.vectorize(math.lgamma)(n + 1.0)
    return np.exp(log_p) @ w


def expected_iterations(cfg: BPTTConfig) -> dict[str, float]:
    """E[r] = r̄ + 1 (exact), E[grad iterations] = E[min(k, r)], E[no-grad] = E[r] − that."""
    k = cfg.backprop_depth
    pmf = recurrence_pmf(cfg, r_max=k)  # P(r = 1..k) is all E[min(k, r)] needs
    tail = 1.0 - np.concatenate([[0.0], np.cumsum(pmf)[:-1]])  # P(r ≥ j), j = 1..k
    grad = float(tail.sum())
    mean = cfg.mean_recurrence + 1.0
    return {"r": mean, "grad": grad, "nograd": mean - grad}


@register
class BPTTObjective(LatentRecurrence):
    """Truncated BPTT (Huginn): r ~ Poisson-log-normal core iterations, gradients through the last k."""

    name = "bptt"
    short = "BPTT"
    budget_reference = True
    color = "tab:orange"
    config = BPTTConfig

    @property
    def default_num_steps(self) -> int:
        return self.cfg.eval_steps or self.cfg.mean_recurrence

    def loss(self, model, batch, step: int, slot: int = 0):
        r = sample_recurrence(step, self.cfg, self.seed)
        k = min(self.cfg.backprop_depth, r)
        # initial-state noise differs per micro-batch but is reproducible
        g = torch.Generator(device=batch["input_ids"].device).manual_seed(seed_of(self.seed, slot, 1))
        # the model returns the per-position CE (chunked when model.loss_chunk is set)
        w = batch["loss_weight"]
        ce = model(batch["input_ids"], num_steps=r, num_grad_steps=k, generator=g, labels=batch["target_ids"]) * w
        loss = ce.sum() / w.sum().clamp(min=1)
        return loss, {"r": r, "no_grad_iters": r - k, "grad_iters": k}

    @staticmethod
    def core_iterations(cfg: BPTTConfig, r: int | None = None) -> tuple[float, float]:
        if r is None:
            e = expected_iterations(cfg)
            return e["grad"], e["nograd"]
        grad = float(min(cfg.backprop_depth, r))
        return grad, r - grad

    @staticmethod
    def saved_core_iterations(cfg: BPTTConfig) -> int:
        return cfg.backprop_depth  # min(k, r), and r >= k almost always

    @staticmethod
    def draw_iterations(cfg: BPTTConfig, step: int, seed: int = 0) -> int:
        return sample_recurrence(step, cfg, seed)
