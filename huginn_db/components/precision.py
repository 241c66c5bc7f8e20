"""Precision choice and memory probes."""

from __future__ import annotations

import contextlib
import functools
import resource
from pathlib import Path

import torch


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls beat fp32 here: CUDA, or a CPU with native bf16 dot products."""
    return _fast_bf16(device.type)


@functools.lru_cache(maxsize=None)  # asked every micro-step; /proc/cpuinfo does not change
def _fast_bf16(device_type: str) -> bool:
    if device_type == "cuda":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """train.precision on this device: bf16 for autocast, or None (fp32)."""
    use_bf16 = precision == "bf16" or (precision == "auto" and fast_bf16(device))
    return torch.bfloat16 if use_bf16 else None


def autocast_context(precision: str, device: torch.device):
    dtype = autocast_dtype(precision, device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: peak allocated by torch; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
