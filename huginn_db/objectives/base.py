"""What every training objective provides, and the helpers they share.

An objective trains the looped model one way and says how inference runs at a chosen depth.
Besides `loss` / `logits` / `noise` it describes its own cost to the analytic accounting in
`huginn_db.compute` (core iterations with and without gradient, σ evaluations, inference
evaluations), so compute, compare, bench and lm-eval need no per-objective code.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from huginn_db.kv_cache import KVCache
from huginn_db.objectives.adaptive import ExitRule, run_adaptive


def unwrap(model):
    return getattr(model, "module", model)  # a DeepSpeed engine wraps the nn.Module


def seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class Objective:
    """Base class; subclasses register with `huginn_db.objectives.register`."""

    name: ClassVar[str]  # the recipe's objective.name and its config section
    short: ClassVar[str]  # label in tables and plots
    color: ClassVar[str] = "tab:gray"  # plot colour
    config: ClassVar[type]  # its config dataclass (objective.<name> in a recipe)
    sigma_conditioning: ClassVar[bool] = False  # the model carries AdaLN σ-conditioning
    # lm-eval: how log-likelihoods are scored (the first is the default) and the samplers it takes
    scores: ClassVar[tuple[str, ...]] = ("recurrence",)
    samplers: ClassVar[tuple[str, ...]] = ()
    # `compare` trains it unless --objectives says otherwise (controls opt out)
    compared_by_default: ClassVar[bool] = True
    # compute-matched comparisons give every objective this one's FLOPs (the method the cheap
    # ones are measured against); without one among those compared, the most expensive one's
    budget_reference: ClassVar[bool] = False

    def __init__(self, cfg, seed: int = 0):
        self.cfg, self.seed = cfg, seed

    @property
    def default_num_steps(self) -> int:
        """Test-time loop iterations when none are asked for."""
        raise NotImplementedError

    def train_batch(self, corpus, batch_size: int, step: int, micro: int, rank: int, world: int, grad_accum: int):
        """The micro-batch `loss` trains on at (step, micro, rank): the corpus's, unless the
        objective keeps examples across steps."""
        return corpus.train_batch(batch_size, step, micro, rank, world, grad_accum)

    def state_dict(self) -> dict | None:
        """This rank's training state beyond the weights (checkpointed per rank); None: none."""
        return None

    def load_state_dict(self, states: list[dict], batch_size: int, world: int, grad_accum: int, rank: int = 0) -> None:
        """Resume this rank from every rank's `state_dict` of a checkpoint (the world may have changed)."""

    def loss(self, model, batch, step: int, slot: int = 0) -> tuple[torch.Tensor, dict]:
        """One training micro-step: (scalar loss, stats). `slot` is the global micro-batch
        index (step·grad_accum + micro)·world + rank. stats["r"], when present, is the number of
        core iterations this step ran (the FLOP accounting charges it), a host number; other
        stats may be tensors, read on the host only at log steps."""
        raise NotImplementedError

    def skipped_step(self, model, step: int) -> None:
        """Called when the update of (0-based) `step` was skipped for non-finite values."""

    def noise(self, model, batch: int, length: int, generator=None) -> torch.Tensor:
        """Each position's random start (B, length, h), CPU float32."""
        raise NotImplementedError

    def logits(
        self, model, input_ids, num_steps: int | None = None, generator=None, noise=None, cache=None, **kw
    ) -> torch.Tensor:
        """Inference at `num_steps` loop iterations."""
        raise NotImplementedError

    # --- analytic cost (huginn_db.compute) ---------------------------------------------------

    @staticmethod
    def core_iterations(cfg, r: int | None = None) -> tuple[float, float]:
        """(core iterations with gradient, without) of one training step; r: the drawn depth,
        None: the expectation over the objective's depth law."""
        raise NotImplementedError

    @staticmethod
    def saved_core_iterations(cfg) -> int:
        """Core iterations whose activations autograd keeps for the backward."""
        raise NotImplementedError

    @staticmethod
    def sigma_evaluations(cfg, batch: int, seq: int) -> int:
        """σ values a training step conditions on (AdaLN evaluations); 0 without σ-conditioning."""
        return 0

    @staticmethod
    def decode_evaluations(cfg, num_steps: int, sampler: str | None = None) -> int:
        """Inference: evaluations of coda + head per new token at `num_steps` iterations. 0 for a
        latent recurrence (the core loops, coda and head run once at the end)."""
        return 0

    @classmethod
    def model_options(cls, cfg) -> dict:
        """ModelConfig fields this objective decides (the recorded config carries them)."""
        return {"sigma_conditioning": cls.sigma_conditioning, "self_condition": False}

    @staticmethod
    def grad_decodes(cfg, r: float | None = None) -> float:
        """Coda + head passes with gradient per training sequence (σ-conditioned: each with its
        σ-MLP and AdaLN); each but a row's last feeds a softmax·Ê readout with gradient (DB unrolled)."""
        return 1.0

    @classmethod
    def grad_readouts(cls, cfg, r: float | None = None) -> float:
        """softmax·Ê readouts with gradient per training sequence: between DB's unrolled decodes."""
        return cls.grad_decodes(cfg, r) - 1

    @staticmethod
    def nograd_decodes(cfg, r: float | None = None) -> float:
        """No-grad coda + head + softmax·Ê passes per training sequence (self-conditioning on D)."""
        return 0.0

    @staticmethod
    def draw_iterations(cfg, step: int, seed: int = 0) -> int | None:
        """The core iterations `loss` runs at `step` (None: always one pass)."""
        return None


class LatentRecurrence(Objective):
    """Inference as Huginn's loop: a random initial state per position, `num_steps` core
    iterations, then coda and head once (BPTT and the fixed-depth controls)."""

    def noise(self, model, batch: int, length: int, generator=None) -> torch.Tensor:
        """Initial states s₀ for `length` positions (CPU, float32), as `recur` would draw them."""
        m = unwrap(model)
        return m.initial_state(torch.empty(batch, length, m.cfg.hidden), generator)

    @torch.no_grad()
    def logits(
        self, model, input_ids, num_steps=None, generator=None, noise=None, cache=None, exit=None, stats=None, **_
    ):
        """noise: the initial state s₀ (default: drawn from `generator`); cache: see decoding;
        exit: an adaptive-exit rule (objectives.adaptive; num_steps is then the maximum depth).
        An objective trained with damped updates (cfg.damping, Equilibrium Reasoners) runs them here too."""
        m, K = unwrap(model), num_steps or self.default_num_steps
        a = getattr(self.cfg, "damping", 0.0)
        rule = ExitRule.parse(exit)
        if rule is None:
            return m.recur(input_ids, K, 0, generator, state=noise, cache=cache, damping=a)
        cache = cache if cache is not None else KVCache()
        e = m.encode(input_ids, cache)
        s0 = m.initial_state(e, generator) if noise is None else noise.to(e.device, e.dtype)
        state = [s0]

        def step(active):
            new = m.core_step(state[0], e, cache=cache)
            new = new if a == 0 else a * state[0] + (1 - a) * new
            state[0] = new if active is None else torch.where(active[..., None], new, state[0])
            return m.decode(state[0], cache=cache), state[0]

        return run_adaptive(step, K, rule, cache, start_latent=s0, stats=stats)
