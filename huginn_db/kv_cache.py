"""The KV cache of incremental decoding: one entry per attention call of a looped forward pass."""

from __future__ import annotations

import torch


class KVCache:
    """Keys/values of past positions, one entry per attention call of a forward pass.

    A looped model makes prelude_layers + core_layers·r + coda_layers attention calls per pass
    (DiffusionBlocks: core and coda once per denoiser evaluation). A pass over new positions
    run at the same depth and with the same sampler makes the same calls in the same order as
    the pass that filled the cache, so the i-th call of every pass extends entry i: keys and
    values are cached per (block, loop iteration) without naming either. `encode` opens a pass.
    """

    _SAME = "cached passes must run at the same depth with the same sampler"

    def __init__(self):
        self.keys: list[torch.Tensor] = []  # (B, S, H, D) per attention call
        self.values: list[torch.Tensor] = []
        self.length = 0  # positions cached, including the current pass's
        self.offset = 0  # absolute position of the current pass's first token
        self._call = 0

    def start(self, num_new: int) -> None:
        if self._call != len(self.keys):
            raise RuntimeError(
                f"the previous pass made {self._call} attention calls, the cache holds {len(self.keys)}: {self._SAME}"
            )
        self.offset, self.length, self._call = self.length, self.length + num_new, 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Appends this call's new keys/values; returns all of them (past + new)."""
        i, self._call = self._call, self._call + 1
        if i == len(self.keys):
            if self.offset:
                raise RuntimeError(f"a pass made more attention calls than the one that filled the cache: {self._SAME}")
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[i] = torch.cat([self.keys[i], k], dim=1)
            self.values[i] = torch.cat([self.values[i], v], dim=1)
        return self.keys[i], self.values[i]
