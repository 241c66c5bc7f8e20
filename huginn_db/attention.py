"""Which attention kernel runs: xformers where it has kernels (CUDA tensors) and a probe call
works, SDPA elsewhere."""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

log = logging.getLogger("huginn_db.model")

# the probe runs in half precision: two correct kernels differ by a few bf16 ulps of O(1) outputs
_PROBE_TOLERANCE = 5e-2


def xformers_available() -> bool:
    """xformers.ops imports (a wheel built for another torch may still fail: see xformers_problem)."""
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA build
        return False
    return True


def _probe_inputs(device_type: str) -> tuple[torch.Tensor, ...]:
    """q, k, v (B, T, H, D) for the probe: a private generator leaves the training RNG alone."""
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    g = torch.Generator(device_type).manual_seed(0)
    return tuple(torch.randn(1, 16, 2, 64, generator=g, device=device_type, dtype=dtype) for _ in range(3))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


@functools.lru_cache(maxsize=None)
def xformers_problem(device_type: str) -> str | None:
    """Why xformers cannot serve attention on this device type, or None where it can.

    An import is not enough: a wheel built for another torch imports and then fails (or
    computes garbage) in its kernels. So one tiny causal call is checked against SDPA, once
    per process and device type.
    """
    if device_type != "cuda":
        return f"xformers has no kernels for {device_type} tensors"
    try:
        import xformers.ops as xops
    except Exception as err:  # ImportError, or a broken CUDA build
        return f"import xformers.ops failed ({_first_line(err)})"
    try:
        q, k, v = _probe_inputs(device_type)
        with torch.no_grad(), torch.autocast(q.device.type, enabled=False):
            got = xops.memory_efficient_attention(q, k, v, attn_bias=xops.LowerTriangularMask())
            want = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
            )
            diff = (got.float() - want.transpose(1, 2).float()).abs().max().item()
    except Exception as err:
        return f"xformers.ops.memory_efficient_attention failed ({_first_line(err)})"
    if not diff <= _PROBE_TOLERANCE:  # NaN fails too
        return f"xformers.ops.memory_efficient_attention disagrees with SDPA (max |diff| {diff:.3g})"
    return None


@functools.lru_cache(maxsize=None)
def _warn_fallback(device_type: str, problem: str) -> None:
    log.warning("model.attention=auto: xformers unusable on %s (%s); using SDPA", device_type, problem)


def select_attention_backend(requested: str, device: torch.device) -> str:
    """xformers only where it has kernels (CUDA tensors) and its probe passes; SDPA everywhere else."""
    if requested not in ("auto", "sdpa", "xformers"):
        raise ValueError(f"model.attention must be auto|sdpa|xformers, got {requested!r}")
    if requested == "sdpa":
        return "sdpa"
    if device.type != "cuda":
        if requested == "xformers":
            raise RuntimeError("model.attention=xformers needs CUDA tensors and an importable xformers")
        return "sdpa"
    problem = xformers_problem(device.type)
    if problem is None:
        return "xformers"
    if requested == "xformers":
        raise RuntimeError(f"model.attention=xformers, but {problem}; use model.attention=auto or sdpa")
    _warn_fallback(device.type, problem)
    return "sdpa"


@functools.lru_cache(maxsize=None)
def _cached_backend(requested: str, device_type: str) -> str:
    backend = select_attention_backend(requested, torch.device(device_type))
    log.info("attention backend on %s: %s", device_type, backend)
    return backend
