"""Measured compute: FLOPs of a real step (FlopCounterMode), autograd's saved activations, and
this machine's matmul peak — the counterparts of `huginn_db.compute`'s analytic figures.
"""

from __future__ import annotations

import contextlib
import time

import torch

# --- measurement ---------------------------------------------------------------------------


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flop(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def flop_counter() -> "torch.utils.flop_counter.FlopCounterMode":
    """FlopCounterMode that also counts the CPU flash-attention kernel (torch's SDPA formulas)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flop
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_cpu_backward_flop
    return FlopCounterMode(display=False, custom_mapping=mapping)


@contextlib.contextmanager
def _sdpa_attention(model):
    """xformers' kernels are not in torch's FLOP registry; the FLOPs don't depend on the
    kernel, so count through SDPA."""
    cfg = getattr(model, "module", model).cfg
    saved = cfg.attention
    cfg.attention = "sdpa"
    try:
        yield
    finally:
        cfg.attention = saved


def measure_step_flops(model, objective, batch: dict, step: int) -> int:
    """Matmul FLOPs of one real training micro-step (`objective.loss` + backward), counted by
    FlopCounterMode. Gradients are left in `.grad` (accumulated), as after a step."""
    with _sdpa_attention(model), flop_counter() as counter:
        loss, _ = objective.loss(model, batch, step)
        loss.backward()
    return int(counter.get_total_flops())


def measure_saved_activations(model, objective, batch: dict, step: int) -> int:
    """Bytes of the distinct tensors autograd saves for the backward in one micro-step's forward
    (parameters and buffers excluded): the measured counterpart of `activation_memory()['saved']`."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, object] = {}  # data_ptr -> storage, held so a freed address is not reused

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in own:
            seen.setdefault(st.data_ptr(), st)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = objective.loss(model, batch, step)
    del loss
    return sum(st.nbytes() for st in seen.values())


def measure_peak(
    dtype: torch.dtype, n: int | None = None, seconds: float = 1.0, device: str | torch.device = "cpu", windows: int = 5
) -> float:
    """Matmul FLOP/s of n×n @ n×n in `dtype` on `device` (the MFU denominator): the best of
    `windows` timing windows over `seconds`, so a burst of load from other processes on a
    shared machine does not pass for the hardware's peak."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up: kernel selection, thread pool, clocks
    sync()
    best = 0.0
    for _ in range(windows):
        iters, t0 = 0, time.perf_counter()
        while True:
            a @ b
            iters += 1
            if device.type == "cuda" and iters % 10:
                continue  # synchronize rarely so the queue stays full
            sync()
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds / windows:
                break
        best = max(best, 2.0 * n**3 * iters / elapsed)
    return best
