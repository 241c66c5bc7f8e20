"""AdamW with a per-step veto, its parameter groups, and the warm-up + cosine schedule."""

from __future__ import annotations

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


def lr_lambda(t):
    """Linear warm-up to train.lr, then cosine to lr·min_lr_ratio at max_steps (t: TrainConfig)."""

    def f(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        p = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))

    return f


def build_optimizer(model: torch.nn.Module, t) -> tuple[SkippableAdamW, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = SkippableAdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=(t.beta1, t.beta2))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t))
