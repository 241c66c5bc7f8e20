"""Adaptive exit: each position stops iterating when its prediction has settled (Huginn's
per-token early exit), up to a maximum depth.

    exit=kl:5e-4      KL(p_t ‖ p_{t−1}) of successive next-token distributions below 5e-4
                      (Huginn's default criterion; first possible exit after iteration 2)
    exit=entropy:X    entropy of p_t (nats) below X
    exit=latent:X     ‖h_t − h_{t−1}‖ / ‖h_t‖ below X (h: the recurrent state; for DB the
                      denoiser's prediction D; BPTT can exit after iteration 1, from s₀)
    exit=argmax:N     the argmax unchanged for N successive iterations

Every iteration then runs coda and head for the criterion (as Huginn's adaptive generation
does); a position that exits keeps the logits of its last iteration and its state, and in a
KV cache its keys and values carry on into the entries of the iterations it skipped
(huginn_db.kv_cache). The loop stops when every position has exited or at the maximum depth;
with threshold 0 (argmax: N > depth) no position exits early and the logits equal the
fixed-depth ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("kl", "entropy", "latent", "argmax")


@dataclass(frozen=True)
class ExitRule:
    kind: str
    threshold: float

    @classmethod
    def parse(cls, spec) -> "ExitRule | None":
        """'kl:5e-4' etc.; None / '' / 'none': fixed depth."""
        if spec is None or isinstance(spec, ExitRule):
            return spec
        spec = str(spec).strip()
        if spec in ("", "none"):
            return None
        kind, _, value = spec.partition(":")
        if kind not in KINDS:
            raise ValueError(f"exit={spec!r}: expected none or {'|'.join(f'{k}:VALUE' for k in KINDS)}")
        try:
            threshold = float(value)
        except ValueError:
            raise ValueError(f"exit={spec!r}: {value!r} is not a number") from None
        if not threshold >= 0 or (kind == "argmax" and threshold != int(threshold)):
            raise ValueError(f"exit={spec!r}: the threshold must be >= 0 (argmax: a whole number of iterations)")
        return cls(kind, threshold)

    def __str__(self) -> str:
        return f"{self.kind}:{self.threshold:g}"

    def settled(self, logits, prev_logits, latent, prev_latent, streak):
        """(positions whose criterion is met at this iteration, the argmax streak)."""
        logp = torch.log_softmax(logits.float(), -1)
        if self.kind == "argmax":
            same = prev_logits is not None and logits.argmax(-1) == prev_logits.argmax(-1)
            streak = torch.where(same, streak + 1, torch.zeros_like(streak)) if prev_logits is not None else streak
            return streak >= self.threshold, streak
        if self.kind == "entropy":
            return (-(logp.exp() * logp).sum(-1)).clamp(min=0) < self.threshold, streak
        if self.kind == "kl":
            if prev_logits is None:
                return torch.zeros(logits.shape[:-1], dtype=torch.bool, device=logits.device), streak
            prev = torch.log_softmax(prev_logits.float(), -1)
            return (logp.exp() * (logp - prev)).sum(-1).clamp(min=0) < self.threshold, streak
        if prev_latent is None:
            return torch.zeros(logits.shape[:-1], dtype=torch.bool, device=logits.device), streak
        diff = (latent.float() - prev_latent.float()).norm(dim=-1) / latent.float().norm(dim=-1).clamp(min=1e-12)
        return diff < self.threshold, streak


def run_adaptive(step, depth: int, rule: ExitRule, cache, start_latent=None, stats: dict | None = None):
    """Drives `step(active) -> (logits, latent)` (one loop iteration that advances only the
    active positions) for at most `depth` iterations; returns each position's logits at its
    exit. stats["iterations"]: the (B, T) iterations each position ran (stats["history"]: one
    such tensor per call with the same dict). `cache` is required: an
    uncached pass runs as a cache prefill, so exited positions show their keys the same way."""
    out = done = used = prev_logits = None
    prev_latent, streak = start_latent, None
    for t in range(depth):
        cache.frozen = done
        logits, latent = step(None if done is None else ~done)
        if done is None:
            done = torch.zeros(logits.shape[:-1], dtype=torch.bool, device=logits.device)
            used = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
            streak = torch.zeros_like(used)
            out = logits
        else:
            out = torch.where(done[..., None], out, logits)
        used += (~done).long()
        settled, streak = rule.settled(logits, prev_logits, latent, prev_latent, streak)
        done = done | settled
        prev_logits, prev_latent = logits, latent
        if bool(done.all()):
            break
    cache.frozen = None
    cache.fill(t, depth)
    if stats is not None:
        stats["iterations"] = used
        stats.setdefault("history", []).append(used)
    return out
