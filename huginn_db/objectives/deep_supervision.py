"""Deep supervision (HRM, TRM) on Huginn's architecture: the loop's state is carried from one
training step to the next instead of backpropagated through.

Every micro-batch row is a slot that keeps one example for `segments` (M) steps together with
its latent state s. A step runs n = `nograd_steps` core iterations without gradient and then
k = `grad_steps` with (HRM/TRM: k = 1), from the slot's detached state, supervises the coda
output, and keeps the new state (detached). After M steps the slot takes the next example and a
fresh random state. Slots are staggered (slot q is q mod M segments into its first example), so
every batch mixes the depths (n+k), 2(n+k), … M(n+k). A step backpropagates through k core
iterations, so n = 0, k = 1 costs what a DiffusionBlocks step costs, while the model learns to
improve its answer from states it reached itself. HRM's learned halting (ACT) is left out: every
example gets all M segments. Inference is the latent recurrence from a random state, M(n+k)
iterations by default.

Options from Equilibrium Reasoners (EqR): `damping` a makes every core iteration, in training
and at inference, the damped update s ← a·s + (1 − a)·R(s, e) (EqR: a = 0.05), whose fixed
points are R's; `state_noise` σ perturbs a carried state by σ·ε before the step that goes on
from it. `loss_weights` weighs a row by its segment (its slot's age).

Data: the slot at global row q = (micro·world + rank)·B + i holds, as its j-th example, row i
of the corpus's micro-batch of step j. The sample stream is the one the other objectives read,
each sample kept for M steps, still a function of (step, global row) and sharded by global
slot. The carried states are checkpointed with every rank's own slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from huginn_db.errors import ConfigError
from huginn_db.objectives.base import LatentRecurrence, seed_of, unwrap
from huginn_db.objectives.registry import register


@dataclass
class DeepSupervisionConfig:
    nograd_steps: int = 0
    """n: core iterations without gradient before the ones with, every step."""
    grad_steps: int = 1
    """k: core iterations with gradient after the n without, every step, backpropagated through from the
    carried, detached state (1: HRM/TRM's one-step gradient)."""
    segments: int = 16
    """M: steps (supervision segments) a slot keeps its example and its carried state."""
    stagger: bool = True
    """Slot q starts q mod M segments into its first example, so a batch mixes depths (False:
    every slot takes a new example at the same step)."""
    eval_steps: int | None = None
    """Default test-time iterations (None: segments·(nograd_steps + grad_steps), the depth training reaches)."""
    loss_weights: Literal["uniform", "linear", "last"] = "uniform"
    """Weight of an example's segment j = 0…M−1 (a row's j is its slot's age), each with mean 1 over the M
    segments: uniform 1; linear 2(j+1)/(M+1), rising with depth; last M on the last segment and 0 on the
    others (only the final answer is supervised). A batch without slots (tests, FLOP probes) is uniform."""
    damping: float = 0.0
    """a: every core iteration, in training and at inference, is s ← a·s + (1 − a)·R(s, e) (Equilibrium
    Reasoners: 0.05); 0 is the plain update."""
    state_noise: float = 0.0
    """σ: a carried state gets σ·ε, ε ~ N(0, I), before the step that goes on from it (a fresh state gets
    none); ε is seeded by (seed, slot, step), so a resume draws it again."""

    def __post_init__(self):
        if self.nograd_steps < 0:
            raise ValueError(f"nograd_steps must be >= 0, got {self.nograd_steps}")
        if self.grad_steps < 1:
            raise ValueError(f"grad_steps must be >= 1, got {self.grad_steps}")
        if self.loss_weights not in ("uniform", "linear", "last"):
            raise ValueError(f"loss_weights must be uniform|linear|last, got {self.loss_weights!r}")
        if not 0 <= self.damping < 1:
            raise ValueError(f"damping must be in [0, 1), got {self.damping}")
        if not self.state_noise >= 0:
            raise ValueError(f"state_noise must be >= 0, got {self.state_noise}")
        if self.segments < 1:
            raise ValueError(f"segments must be >= 1, got {self.segments}")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ValueError(f"eval_steps must be >= 1 or null, got {self.eval_steps}")

    @property
    def depth(self) -> int:
        """Core iterations an example has been through at its last segment."""
        return self.segments * (self.nograd_steps + self.grad_steps)

    def segment_weight(self, age: int) -> float:
        """`loss_weights` of segment j = age of an example."""
        m = self.segments
        if self.loss_weights == "linear":
            return 2 * (age + 1) / (m + 1)
        if self.loss_weights == "last":
            return float(m) if age == m - 1 else 0.0
        return 1.0


@register
class DeepSupervisionObjective(LatentRecurrence):
    """n no-grad + k grad core iterations per step from each slot's carried, detached state."""

    name = "deep_supervision"
    short = "DeepSup"
    color = "tab:purple"
    config = DeepSupervisionConfig

    def __init__(self, cfg: DeepSupervisionConfig, seed: int = 0):
        super().__init__(cfg, seed)
        self.states: dict[int, torch.Tensor] = {}  # first global row of a micro-batch -> (B, T, h) fp32
        self._examples: dict[tuple[int, int], dict] = {}  # (first row, j) -> corpus micro-batch of step j

    @property
    def default_num_steps(self) -> int:
        return self.cfg.eval_steps or self.cfg.depth

    def schedule(self, rows: list[int], step: int) -> tuple[list[int], list[int]]:
        """(example number j, age = segments already done on it) of global rows at `step`."""
        m = self.cfg.segments
        phase = [step + (q % m if self.cfg.stagger else 0) for q in rows]
        return [p // m for p in phase], [p % m for p in phase]

    def train_batch(self, corpus, batch_size, step, micro, rank, world, grad_accum):
        """The corpus rows this micro-batch's slots hold; rows, example and age are Python lists
        (host bookkeeping: the trainer moves only tensors to the device)."""
        first = (micro * world + rank) * batch_size
        rows = list(range(first, first + batch_size))
        example, age = self.schedule(rows, step)
        needed = sorted(set(example))
        for key in [k for k in self._examples if k[0] == first and k[1] not in needed]:
            del self._examples[key]  # j only grows with the step: an example left behind is done
        for j in needed:
            if (first, j) not in self._examples:
                self._examples[first, j] = corpus.train_batch(batch_size, j, micro, rank, world, grad_accum)
        batch = {k: v.clone() for k, v in self._examples[first, needed[0]].items()}
        for j in needed[1:]:
            take = torch.tensor([e == j for e in example])
            for k, v in self._examples[first, j].items():
                batch[k][take] = v[take]
        return {**batch, "rows": rows, "example": example, "age": age}

    def _fresh_state(self, model, T: int, row: int, example: int, tag: int = 4) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed_of(self.seed, row, example, tag))
        return model.initial_state(torch.empty(1, T, model.cfg.hidden), g)[0]

    def loss(self, model, batch, step: int, slot: int = 0):
        """A batch without slot rows (a plain corpus batch: tests, FLOP probes) starts every row
        from a fresh state and keeps nothing."""
        cfg, ids = self.cfg, batch["input_ids"]
        n, k = cfg.nograd_steps, cfg.grad_steps
        B, T = ids.shape
        m = unwrap(model)
        rows = batch.get("rows")
        key = rows[0] if rows is not None else None
        s = self.states.get(key)
        if s is None or s.shape[:2] != (B, T):  # the run's first step, or a plain batch
            s = torch.empty(B, T, m.cfg.hidden, device=ids.device)
            fresh = range(B)
        else:
            fresh = [i for i, a in enumerate(batch["age"]) if a == 0]
            if cfg.state_noise > 0:  # on the carried rows only; drawn on the state's device, like BPTT's s₀
                g = torch.Generator(device=s.device).manual_seed(seed_of(self.seed, key, step, 6))
                eps = torch.randn(s.shape, generator=g, device=s.device)
                carried = torch.tensor([a > 0 for a in batch["age"]], device=s.device)
                s = s + cfg.state_noise * carried[:, None, None] * eps
        for i in fresh:
            if rows is not None:
                s[i] = self._fresh_state(m, T, rows[i], batch["example"][i]).to(s.device)
            else:
                s[i] = self._fresh_state(m, T, slot, i, tag=5).to(s.device)
        w = batch["loss_weight"]
        labels = batch["target_ids"]
        ce, s = model(
            ids, num_steps=n + k, num_grad_steps=k, state=s, labels=labels, return_state=True, damping=cfg.damping
        )
        if key is not None:
            self.states[key] = s.detach().float()
        if rows is not None and cfg.loss_weights != "uniform":
            # the denominator stays the token count: a segment's weight scales its share of the loss
            seg = torch.tensor([cfg.segment_weight(a) for a in batch["age"]], device=ce.device)
            ce = ce * seg[:, None]
        loss = (ce * w).sum() / w.sum().clamp(min=1)
        stats = {"r": n + k, "no_grad_iters": n, "grad_iters": k}
        if rows is not None:
            stats["depth_mean"] = (sum(batch["age"]) / B + 1) * (n + k)
        return loss, stats

    def skipped_step(self, model, step: int) -> None:
        """A non-finite carried state makes its step's loss non-finite, so only a skipped step
        can leave one: those slots go on from a fresh state (drawn as at their next step), and
        the finite steps never read a state back to the host."""
        m = unwrap(model)
        for key, s in self.states.items():
            for i in (~torch.isfinite(s).flatten(1).all(1)).nonzero().flatten().tolist():
                example = self.schedule([key + i], step + 1)[0][0]
                s[i] = self._fresh_state(m, s.shape[1], key + i, example).to(s.device)

    def state_dict(self) -> dict:
        return {"segments": self.cfg.segments, "states": {k: v.cpu() for k, v in self.states.items()}}

    def load_state_dict(self, states: list[dict], batch_size: int, world: int, grad_accum: int, rank: int = 0) -> None:
        saved = {k: v for sd in states for k, v in sd["states"].items()}
        if not saved:
            return
        mine = [(micro * world + rank) * batch_size for micro in range(grad_accum)]
        rows = sum(v.shape[0] for v in saved.values())
        if states[0]["segments"] != self.cfg.segments or any(
            k not in saved or saved[k].shape[0] != batch_size for k in mine
        ):
            raise ConfigError(
                f"deep_supervision: the checkpoint carries states of {rows} slots in micro-batches of "
                f"{next(iter(saved.values())).shape[0]} (segments={states[0]['segments']}); this run needs "
                f"{world * grad_accum * batch_size} in micro-batches of {batch_size} (segments={self.cfg.segments}): "
                f"keep train.micro_batch_size·grad_accum·world and segments, or start a new run"
            )
        self.states = {k: saved[k] for k in mine}

    # --- analytic cost ---
    @staticmethod
    def core_iterations(cfg: DeepSupervisionConfig, r: int | None = None) -> tuple[float, float]:
        return float(cfg.grad_steps), float(cfg.nograd_steps)

    @staticmethod
    def saved_core_iterations(cfg: DeepSupervisionConfig) -> int:
        return cfg.grad_steps

    @staticmethod
    def draw_iterations(cfg: DeepSupervisionConfig, step: int, seed: int = 0) -> int:
        return cfg.nograd_steps + cfg.grad_steps
