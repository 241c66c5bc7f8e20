"""Which attention kernel runs: xformers where it has kernels (CUDA tensors), SDPA elsewhere."""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger("huginn_db.model")


def xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA build
        return False
    return True


def select_attention_backend(requested: str, device: torch.device) -> str:
    """xformers only where it has kernels (CUDA tensors); SDPA everywhere else."""
    if requested not in ("auto", "sdpa", "xformers"):
        raise ValueError(f"model.attention must be auto|sdpa|xformers, got {requested!r}")
    if requested == "sdpa":
        return "sdpa"
    usable = device.type == "cuda" and xformers_available()
    if requested == "xformers" and not usable:
        raise RuntimeError("model.attention=xformers needs CUDA tensors and an importable xformers")
    return "xformers" if usable else "sdpa"


@torch.compiler.assume_constant_result  # torch.compile: a constant, not traced per call
@functools.lru_cache(maxsize=None)
def _cached_backend(requested: str, device_type: str) -> str:
    backend = select_attention_backend(requested, torch.device(device_type))
    log.info("attention backend on %s: %s", device_type, backend)
    return backend
