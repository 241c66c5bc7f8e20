"""The KV cache of incremental decoding: one entry per attention call of a looped forward pass,
optionally with its loop iterations sharing a fixed number of slots."""

from __future__ import annotations

import torch


class KVCache:
    """Keys/values of past positions, one entry per (loop iteration, attention call in it).

    A looped model makes prelude_layers attention calls, then per loop iteration core_layers
    calls (DiffusionBlocks, and adaptive exit: core and coda per iteration), then the coda's.
    `encode` opens a pass, `iteration` (called by every core step) starts an iteration: the
    j-th call of iteration t extends entry (t, j), so a pass over new positions at the same
    depth and with the same sampler extends exactly the entries the first pass made.

    slots = N (Huginn's "compress-sN"): iteration t uses entry (t mod N, j), so later
    iterations overwrite the keys earlier ones wrote for the same positions and the cache holds
    at most N iterations' worth per position; a later position at iteration t attends to each
    past position's keys from the last iteration ≡ t (mod N) that position ran. None: every
    iteration keeps its own entries (exactly the uncached computation).

    Adaptive exit (`freeze`): positions that stopped iterating keep their keys in the entries
    of later iterations — the entry of their last iteration, carried on ("latest", as Huginn's
    cache looks up entries missing for tokens that exited) — and `fill` carries every entry on
    to the maximum depth when a pass stops early, so the next pass finds them all.
    """

    _SAME = "cached passes must run at the same depth with the same sampler"

    def __init__(self, slots: int | None = None):
        if slots is not None and slots < 1:
            raise ValueError(f"kv_slots must be >= 1 (None: one entry per iteration), got {slots}")
        self.slots = slots
        self.entries: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (B, S, H, D) keys, values
        self.length = 0  # positions cached, including the current pass's
        self.offset = 0  # absolute position of the current pass's first token
        self._t, self._j = -1, 0  # current iteration (-1: prelude) and call within it
        self.frozen: torch.Tensor | None = None  # (B, T) positions that exited, during a pass

    def start(self, num_new: int) -> None:
        short = [k for k, (kk, _) in self.entries.items() if kk.shape[1] != self.length]
        if short:
            raise RuntimeError(f"the previous pass left {len(short)} cache entries without its positions: {self._SAME}")
        self.offset, self.length = self.length, self.length + num_new
        self._t, self._j, self.frozen = -1, 0, None

    def iteration(self) -> None:
        """A loop iteration starts (every core step calls this)."""
        self._t, self._j = self._t + 1, 0

    def _key(self, t: int, j: int) -> tuple:
        if t < 0:
            return ("prelude", j)
        return (t % self.slots if self.slots else t, j)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes this call's new keys/values; returns all of them (past + new)."""
        key, T = self._key(self._t, self._j), k.shape[1]
        self._j += 1
        past = self.entries.get(key)
        frozen = self.frozen is not None and self._t > 0 and bool(self.frozen.any())
        if past is not None and past[0].shape[1] == self.length:  # a shared slot this pass already wrote
            pk, pv = past
            if frozen:  # exited positions keep what they wrote there
                k, v = self._keep(pk[:, -T:], k), self._keep(pv[:, -T:], v)
            k, v = torch.cat([pk[:, :-T], k], dim=1), torch.cat([pv[:, :-T], v], dim=1)
        else:
            if frozen:  # exited positions carry their previous iteration's keys on
                lk, lv = self.entries[self._key(self._t - 1, key[1])]
                k, v = self._keep(lk[:, -T:], k), self._keep(lv[:, -T:], v)
            if past is None:
                if self.offset:
                    raise RuntimeError(
                        f"a pass made an attention call the one that filled the cache did not: {self._SAME}"
                    )
            elif past[0].shape[1] == self.offset:
                k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
            else:
                raise RuntimeError(self._SAME)
        self.entries[key] = (k, v)
        return k, v

    def _keep(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return torch.where(self.frozen[:, :, None, None], old, new)

    def fill(self, last: int, depth: int) -> None:
        """A pass stopped after iteration `last` of at most `depth`: entries of the iterations it
        skipped get its positions from iteration `last` (what an exited position carries on)."""
        calls = [j for (t, j) in self.entries if t == self._key(last, 0)[0]]
        T = self.length - self.offset
        for t in range(last + 1, depth):
            for j in calls:
                key = self._key(t, j)
                past = self.entries.get(key)
                if past is not None and past[0].shape[1] == self.length:
                    continue
                lk, lv = self.entries[self._key(last, j)]
                new = (lk[:, -T:], lv[:, -T:])
                self.entries[key] = new if past is None else tuple(torch.cat([p, n], 1) for p, n in zip(past, new))

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.entries.values())
