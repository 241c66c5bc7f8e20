"""AdamW with a per-step veto, its parameter groups, and the lr schedules (warm-up, then cosine,
warmup-stable-decay, Huginn's trapezoid or constant) with the rule for changing one on resume."""

from __future__ import annotations

import dataclasses
import math

import torch


class SkippableAdamW(torch.optim.AdamW):
    """AdamW whose update the trainer can veto for a step: parameters and moments stay as they
    were. DeepSpeed's ZeRO wrappers call it once per group / partition on every rank, so one flag
    set on every rank skips the whole update at any stage."""

    skip = False

    def step(self, closure=None):
        return None if self.skip else super().step(closure)


def param_groups(model: torch.nn.Module, weight_decay: float):
    """Weight decay on matrices only (not the embedding, norms or biases)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "wte" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# wsd's decay shapes over progress p in [0, 1] (Hägele et al. 2024, "Scaling Laws and
# Compute-Optimal Training Beyond Fixed Training Durations")
DECAY_SHAPES = {
    "linear": lambda p: 1 - p,
    "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)),
    "1-sqrt": lambda p: 1 - math.sqrt(p),
}


def decay_steps(t) -> int:
    """Steps of wsd's decay / trapezoid's cool-down: the last decay_fraction of max_steps."""
    return math.ceil(t.decay_fraction * t.max_steps)


def lr_lambda(t):
    """The lr multiplier of step `step` (0-based, LambdaLR's epoch; t: TrainConfig): linear
    warm-up to train.lr, then t.schedule. The decays reach their end at step max_steps."""
    decay = decay_steps(t)
    start = t.max_steps - decay  # wsd / trapezoid: the lr is still train.lr at this step

    def f(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.schedule == "cosine":
            p = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
            return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))
        if t.schedule == "constant" or step <= start:
            return 1.0
        p = min(1.0, (step - start) / decay)
        if t.schedule == "trapezoid":  # Huginn's cool-down: linear towards 0, floored at the minimum
            return max(t.min_lr_ratio, 1 - p)
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * DECAY_SHAPES[t.decay_shape](p)

    return f


# the keys that shape each schedule's lr curve (train.*), saved with every checkpoint
COMMON_KEYS = ("schedule", "max_steps", "lr", "warmup_steps")
SCHEDULE_KEYS = {
    "cosine": (*COMMON_KEYS, "min_lr_ratio"),
    "wsd": (*COMMON_KEYS, "min_lr_ratio", "decay_fraction", "decay_shape"),
    "trapezoid": (*COMMON_KEYS, "min_lr_ratio", "decay_fraction"),
    "constant": COMMON_KEYS,
}
EXTENDABLE = ("max_steps", "decay_fraction")  # what train.extend_ok lets a resume change


def schedule_state(t) -> dict:
    return {k: getattr(t, k) for k in SCHEDULE_KEYS[t.schedule]}


def schedule_change(saved: dict, t, step: int) -> str | None:
    """Why a run resumed after `step` steps under t (TrainConfig) may not continue the schedule
    it saved (`schedule_state`), or None. A changed key is refused unless t.extend_ok and only
    EXTENDABLE keys changed and every lr of the steps taken stays the same."""
    keys = dict.fromkeys((*SCHEDULE_KEYS[saved.get("schedule", t.schedule)], *SCHEDULE_KEYS[t.schedule]))
    changed = [k for k in keys if k in saved and saved[k] != getattr(t, k)]
    if not changed:
        return None
    key = changed[0]
    now, was = getattr(t, key), saved[key]
    if not t.extend_ok or not set(changed) <= set(EXTENDABLE):
        hint = " or pass train.extend_ok=true to move the end of a run whose decay has not begun" * (key in EXTENDABLE)
        return (
            f"train.{key}={now} but the checkpoint's run has train.{key}={was}: resuming would change the lr "
            f"schedule it trained under; keep train.{key}={was}{hint}, or start a new run_dir"
        )
    old, new = lr_lambda(dataclasses.replace(t, **saved)), lr_lambda(t)
    moved = next((s for s in range(step) if old(s) != new(s)), None)
    if moved is None:
        return None
    lr = t.lr
    return (
        f"train.extend_ok=true cannot change train.{key} from {was} to {now}: step {moved + 1} of the "
        f"{step} already taken ran at lr {lr * old(moved):.4g}, the new {t.schedule} schedule gives it "
        f"{lr * new(moved):.4g} (its decay had begun); keep train.{key}={was}"
    )


def apply_schedule(scheduler) -> None:
    """Set the optimizer's lr from the scheduler's own lambda at its restored step: a resumed
    checkpoint holds the lr its saved schedule gave the next step, which an allowed change
    (train.extend_ok) may have moved."""
    for group, base, f in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * f(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]


def build_optimizer(model: torch.nn.Module, t) -> tuple[SkippableAdamW, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = SkippableAdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t))
