"""Compute-cost accounting for the looped model: analytic FLOPs, measured FLOPs, memory, peak.

    huginn-db flops RECIPE.yaml [dotted.key=value ...] [--json] [--measure]
    huginn-db peak [--json]

Conventions (SPEC §4; every number this module prints follows them)
--------------------------------------------------------------------
* FLOPs are matmul FLOPs, 2 per multiply-add: the linear layers, attention's two batched
  products (QKᵀ and P·V) and the tied LM head (B·T·h·V). Norms, RoPE, SiLU, softmax, the loss
  and the optimizer are not counted, and embedding lookups are excluded. This is exactly what
  `torch.utils.flop_counter.FlopCounterMode` counts, so the two can be compared to the FLOP.
* Attention is counted over the full T×T score matrix although the mask is causal (the kernel
  really does about half of it). That is torch's own convention for every SDPA kernel in its
  FLOP registry ("we aren't accounting for causal attention"). On CPU, SDPA runs
  `_scaled_dot_product_flash_attention_for_cpu`, which torch's registry does not know at all
  (FlopCounterMode reports 0 for it); `measure_step_flops` registers it with torch's own SDPA
  formulas, so CPU and CUDA measurements share one convention.
* Backward = 2× forward for every matmul (gradient w.r.t. the input and w.r.t. the weight),
  except: attention backward = 2.5× forward (torch's SDPA formula: the kernel recomputes the
  scores, then four products), and the first Linear of the σ-embedding MLP = 1× (its input,
  sinusoids of σ, needs no gradient). The adapter's backward is full 2×: its input
  concat(state, e) needs a gradient through e even when the state is detached, which is how
  the prelude learns under truncated BPTT.
* No-grad iterations are forward only. With `model.checkpoint_core` the grad iterations are
  charged one extra forward (activation-checkpoint recompute), and with `model.loss_chunk`
  (chunked cross-entropy) the head one extra forward (each chunk's logits are rebuilt in the
  backward); both land in the `recompute` part.
* A training "step" is one micro-batch forward + backward on one rank (what `objective.loss`
  and `measure_step_flops` do); an optimizer step is grad_accum of them per rank.
* BPTT: r = Poisson(e^τ) + 1, τ ~ N(ln r̄ − s²/2, s) (`objectives.sample_recurrence`), so
  E[r] = r̄ + 1; min(k, r) iterations with grad, r − min(k, r) without. The cost is linear in
  both counts, so E[FLOPs] = fixed + E[min(k, r)]·grad_iter + E[r − min(k, r)]·nograd_iter, with
  E[min(k, r)] = Σ_{j≤k} P(r ≥ j) from the exact pmf (Gauss–Hermite over τ of the Poisson pmf).
* DiffusionBlocks: one σ-conditioned pass prelude → core (once) → coda → head, plus AdaLN:
  each conditioned block (core and coda) has `ada` = Linear(C, 6h) applied once per σ, i.e.
  per sequence (`sigma_per: sequence`) or per token (`token`), and the σ-embedding MLP (two
  C×C layers) runs once per σ as well.

Why the paper-shape BPTT/DB training ratio is 6.3×, not the ≈ 5.8× first quoted
-------------------------------------------------------------------------------
In units of one core forward R (adapter + l_R blocks), with F = prelude + coda + head forward:
BPTT = 3F + 3·E[min(k,r)]·R + E[r − min(k,r)]·R = 3F + 23.95R + 25.02R and DB = 3F + 3R + AdaLN.
At the paper shape (h 512, mlp 2048, V 32000, T 256) the tied head alone is 0.9 R per token,
F ≈ 1.87 R, and the ratio is (5.6 + 49.0)/(5.6 + 3) = 6.34×; at the Huginn-3.5B shape the head
is relatively small (F ≈ 1.18 R) and it is 8.04×. Our DB model's AdaLN does not close the gap:
per sequence it is 12·C·h FLOPs per conditioned block per sequence, < 0.01 % of DB's step.
Lower ratios need conventions this code does not have: σ per token (AdaLN on every token,
4.3 % of DB's step) gives 6.06×, charging r̄ instead of E[r] = r̄ + 1 iterations 6.22×, both
5.95×; a forward softmax·Ê readout in DB's training step (it computes none) would give 5.74×.
Inference is the other way round: DB runs coda + head + softmax·Ê every iteration (D needs
logits each step), so per iteration it costs R + coda + 2·head (+ AdaLN) instead of R: at the
paper shape 124.8 M against 36.7 M FLOPs per token and iteration, 3.2× Huginn's total at K = 32.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time

import numpy as np
import torch

from huginn_db.model import ModelConfig
from huginn_db.objectives import BPTTConfig, DiffusionBlocksConfig

OBJECTIVE_NAMES = ("bptt", "diffusion_blocks")
INFERENCE_STEPS = (1, 4, 8, 32)
TRAIN_PARTS = ("prelude", "core_grad", "core_nograd", "coda", "head", "adaln", "recompute")


def _is_db(obj_cfg) -> bool:
    if isinstance(obj_cfg, DiffusionBlocksConfig):
        return True
    if isinstance(obj_cfg, BPTTConfig):
        return False
    raise TypeError(f"expected a BPTTConfig or DiffusionBlocksConfig, got {type(obj_cfg).__name__}")


# --- parameters ----------------------------------------------------------------------------

def param_counts(mc: ModelConfig, sigma_conditioning: bool) -> dict[str, int]:
    """Parameters per part, keyed like `RecurrentDepthLM.num_parameters()` (head tied to the
    embedding), plus `adaln`: the σ-conditioning share (ada layers + σ-embedding MLP), which is
    already inside core / coda / sigma_embed."""
    h, m, C = mc.hidden, mc.mlp_hidden, mc.sigma_embed_dim
    ada = (C * 6 * h + 6 * h) if sigma_conditioning else 0
    # 4 RMSNorms, qkv, q/k bias, out proj, gated MLP (fc is 2m wide)
    block = 4 * h + 3 * h * h + 2 * h + h * h + 2 * m * h + m * h
    parts = {
        "embedding": mc.vocab_size * h,
        "prelude": mc.prelude_layers * block,
        "core": 2 * h * h + mc.core_layers * (block + ada),
        "coda": mc.coda_layers * (block + ada),
        "final_norm": h,
        "sigma_embed": 2 * (C * C + C) if sigma_conditioning else 0,
    }
    parts["total"] = sum(parts.values())
    parts["adaln"] = (mc.core_layers + mc.coda_layers) * ada + parts["sigma_embed"]
    return parts


# --- forward FLOPs of the pieces -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Forward:
    """Forward matmul FLOPs of each piece for `n` query tokens attending to `keys` keys each."""

    mc: ModelConfig
    n: int  # tokens computed (B·T in training, 1 per sequence in incremental decoding)
    keys: int  # keys each query attends to (T: full score matrix; context length with a cache)
    n_sigma: int  # σ values (AdaLN evaluations): B per sequence, B·T per token

    @property
    def block_mm(self) -> int:  # qkv, out proj, gated MLP in and out
        h, m = self.mc.hidden, self.mc.mlp_hidden
        return 2 * self.n * (4 * h * h + 3 * h * m)

    @property
    def block_attn(self) -> int:  # QKᵀ and P·V over all keys (causal mask not discounted)
        return 4 * self.n * self.keys * self.mc.hidden

    @property
    def adapter(self) -> int:
        return 2 * self.n * 2 * self.mc.hidden * self.mc.hidden

    @property
    def head(self) -> int:  # tied: logits = x·Eᵀ; D = softmax·Ê has the same cost
        return 2 * self.n * self.mc.hidden * self.mc.vocab_size

    @property
    def ada(self) -> int:  # one conditioned block's Linear(C, 6h)
        return 2 * self.n_sigma * self.mc.sigma_embed_dim * 6 * self.mc.hidden

    @property
    def sigma_layer(self) -> int:  # one of the σ-embedding MLP's two C×C layers
        return 2 * self.n_sigma * self.mc.sigma_embed_dim ** 2


# --- BPTT recurrence law -------------------------------------------------------------------

def recurrence_pmf(cfg: BPTTConfig, r_max: int | None = None, nodes: int = 96) -> np.ndarray:
    """P(r = 1..r_max) for `objectives.sample_recurrence`: the Poisson pmf of r − 1 averaged
    over τ ~ N(ln r̄ − s²/2, s) by Gauss–Hermite quadrature (`pmf[i]` is P(r = i + 1))."""
    s = cfg.recurrence_std
    mu = math.log(cfg.mean_recurrence) - 0.5 * s * s
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    lam = np.exp(mu + s * x)
    w = w / w.sum()
    if r_max is None:  # far into the tail: e^τ at τ's +8 sd, plus 10 Poisson sd
        lam_hi = math.exp(mu + 8 * s)
        r_max = int(lam_hi + 10 * math.sqrt(lam_hi)) + 2
    n = np.arange(r_max)[:, None]
    log_p = n * np.log(lam)[None, :] - lam[None, :] - np.vectorize(math.lgamma)(n + 1.0)
    return np.exp(log_p) @ w


def expected_iterations(cfg: BPTTConfig) -> dict[str, float]:
    """E[r] = r̄ + 1 (exact), E[grad iterations] = E[min(k, r)], E[no-grad] = E[r] − that."""
    k = cfg.backprop_depth
    pmf = recurrence_pmf(cfg, r_max=k)  # P(r = 1..k) is all E[min(k, r)] needs
    tail = 1.0 - np.concatenate([[0.0], np.cumsum(pmf)[:-1]])  # P(r ≥ j), j = 1..k
    grad = float(tail.sum())
    mean = cfg.mean_recurrence + 1.0
    return {"r": mean, "grad": grad, "nograd": mean - grad}


# --- training FLOPs ------------------------------------------------------------------------

def _chunked_loss(mc: ModelConfig, n: int) -> bool:
    return 0 < mc.loss_chunk < n  # model.cross_entropy takes the one-pass path otherwise


def train_flops(mc: ModelConfig, obj_cfg, batch: int, seq: int, r: int | None = None,
                checkpoint_core: bool | None = None) -> dict[str, float]:
    """Training FLOPs of one micro-step (forward + backward) on `batch` sequences of `seq`
    tokens, per part (TRAIN_PARTS) and `total`.

    BPTT: at the given r, or the expectation over the recurrence law when r is None.
    DiffusionBlocks: r is ignored (one pass). `checkpoint_core` (default: the model's) charges
    the grad iterations an extra forward (activation-checkpoint recompute); a chunked loss
    (`mc.loss_chunk`) charges the head one.
    """
    if checkpoint_core is None:
        checkpoint_core = mc.checkpoint_core
    db = _is_db(obj_cfg)
    n_sigma = (batch * seq if obj_cfg.sigma_per == "token" else batch) if db else 0
    f = _Forward(mc, batch * seq, seq, n_sigma)
    block_fwd = f.block_mm + f.block_attn
    block_train = 3 * f.block_mm + 3.5 * f.block_attn  # fwd + bwd (SDPA backward = 2.5×)
    core_fwd = f.adapter + mc.core_layers * block_fwd
    core_train = 3 * f.adapter + mc.core_layers * block_train
    if db:
        grad_iters, nograd_iters = 1.0, 0.0
    elif r is None:
        e = expected_iterations(obj_cfg)
        grad_iters, nograd_iters = e["grad"], e["nograd"]
    else:
        grad_iters = float(min(obj_cfg.backprop_depth, r))
        nograd_iters = r - grad_iters
    adaln = 0.0
    if db:  # ada per conditioned block (fwd + bwd); σ MLP: layer 2 fwd+bwd, layer 1 fwd + grad_W
        adaln = 3 * (mc.core_layers + mc.coda_layers) * f.ada + (3 + 2) * f.sigma_layer
    parts = {
        "prelude": mc.prelude_layers * block_train,
        "core_grad": grad_iters * core_train,
        "core_nograd": nograd_iters * core_fwd,
        "coda": mc.coda_layers * block_train,
        "head": 3 * f.head,
        "adaln": adaln,
        "recompute": ((grad_iters * core_fwd if checkpoint_core else 0.0)
                      + (f.head if _chunked_loss(mc, batch * seq) else 0.0)),
    }
    parts["total"] = sum(parts.values())
    return parts


# --- inference FLOPs -----------------------------------------------------------------------

def inference_flops(mc: ModelConfig, obj_cfg, num_steps: int, context: int,
                    sampler: str | None = None) -> dict[str, float]:
    """FLOPs to produce one new token with a KV cache, at `num_steps` loop iterations, the new
    token attending to `context` cached positions (its own included) in every layer.

    Huginn (BPTT-trained): prelude once, K core iterations, coda + head once.
    DiffusionBlocks: prelude once; each denoiser evaluation runs σ-MLP + core + coda (each
    with AdaLN) + head, then D = softmax(logits)·Ê (`readout`, V·h); Euler makes K
    evaluations, Heun 2K − 1. `per_iteration` is the cost of one more loop iteration.
    """
    db = _is_db(obj_cfg)
    f = _Forward(mc, 1, context, 1)
    block = f.block_mm + f.block_attn
    core = f.adapter + mc.core_layers * block
    coda = mc.coda_layers * block
    if not db:
        parts = {"prelude": mc.prelude_layers * block, "core": num_steps * core, "coda": coda,
                 "head": f.head, "adaln": 0, "readout": 0}
        parts["total"] = sum(parts.values())
        parts["per_iteration"] = core
        return parts
    evals = 2 * num_steps - 1 if (sampler or obj_cfg.sampler) == "heun" else num_steps
    ada = (mc.core_layers + mc.coda_layers) * f.ada + 2 * f.sigma_layer
    parts = {"prelude": mc.prelude_layers * block, "core": evals * core, "coda": evals * coda,
             "head": evals * f.head, "adaln": evals * ada, "readout": evals * f.head}
    parts["total"] = sum(parts.values())
    parts["per_iteration"] = (parts["total"] - parts["prelude"]) / num_steps
    return parts


# --- activation memory ---------------------------------------------------------------------

def activation_memory(mc: ModelConfig, obj_cfg, batch: int, seq: int,
                      bytes_per_element: int = 4) -> dict[str, int]:
    """Estimated bytes one training micro-step holds beyond weights and optimizer state.

    `saved`: what autograd keeps from the forward for the backward (checked against
    `measure_saved_activations`). Per token, a sandwich block saves 16h + 4m elements (its
    input, the four norms' normalised values, qkv, rotated q and k, attention output and
    out-proj input, the MLP's 2m pre-activation, SiLU output and product) plus H + 4 (log-sum-
    exp, norm statistics); AdaLN adds 4h per token (modulated inputs, gated outputs) and
    4h + C per σ per conditioned block, and the σ-embedding MLP 4C per σ. Each grad core iteration adds the adapter's 2h input; the decode path
    saves 5h and the fp32 log-softmax (V per token). BPTT saves min(k, r) ≤ k core iterations
    (k is charged: r ≥ k almost always) and nothing from no-grad iterations; DB saves one.
    `peak` adds what exists only at the start of the backward, when everything saved is still
    alive: the fp32 gradients of the log-softmax and of the logits (2V per token). With a
    chunked loss (`mc.loss_chunk` = c positions) nothing V-sized is saved; the backward rebuilds
    one chunk at a time: its logits, log-softmax and their two gradients (4cV, transient). Parameter
    gradients (`param_grads`, for reference) appear while the backward frees activations at
    least as large (the log-softmax output goes before the head's V·h gradient), so they do
    not add to the peak; the RSS probe in eval/bench_train.py agrees to a few %. `bytes_per_element` 4 is
    fp32; under bf16 autocast use 2 for a rough figure (norm statistics and the log-softmax
    stay fp32).
    """
    db = _is_db(obj_cfg)
    h, m, C, V, H = mc.hidden, mc.mlp_hidden, mc.sigma_embed_dim, mc.vocab_size, mc.heads
    n = batch * seq
    n_sigma = (n if obj_cfg.sigma_per == "token" else batch) if db else 0
    plain = n * (16 * h + 4 * m + H + 4)
    cond = plain + (n * 4 * h + n_sigma * (4 * h + C) if db else 0)
    iters = 1 if db else obj_cfg.backprop_depth
    elements = (mc.prelude_layers * plain + iters * (n * 2 * h + mc.core_layers * cond)
                + mc.coda_layers * cond + n * 5 * h + n_sigma * 4 * C)
    if _chunked_loss(mc, n):
        saved = elements * bytes_per_element + n * 8  # + int64 targets
        transient = 4 * mc.loss_chunk * V * 4
    else:
        saved = elements * bytes_per_element + n * V * 4 + n * 8  # + fp32 log-softmax, int64 targets
        transient = 2 * n * V * 4
    return {"saved": saved, "backward_transient": transient,
            "param_grads": param_counts(mc, db)["total"] * 4, "peak": saved + transient}


# --- measurement ---------------------------------------------------------------------------

def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args,
                            out_shape=None, **kwargs) -> int:
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
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in own:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = objective.loss(model, batch, step)
    del loss
    return sum(seen.values())


def measure_peak(dtype: torch.dtype, n: int | None = None, seconds: float = 1.0,
                 device: str | torch.device = "cpu", windows: int = 5) -> float:
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
        best = max(best, 2.0 * n ** 3 * iters / elapsed)
    return best


# --- recipe report -------------------------------------------------------------------------

def recipe_seq_len(cfg) -> int:
    """Training sequence length: the text window, else the model context (an upper bound for
    the variable-length reasoning examples)."""
    return cfg.data.text.seq_len if cfg.data.name == "text" else cfg.model.context


def flops_report(cfg, num_steps=INFERENCE_STEPS) -> dict:
    """Parameters, training FLOPs (both objectives on the recipe's model shape), inference
    FLOPs per token, activation memory and the BPTT/DB ratios, for a `RunConfig`."""
    mc, B, T = cfg.model, cfg.train.micro_batch_size, recipe_seq_len(cfg)
    objs = {"bptt": cfg.objective.bptt, "diffusion_blocks": cfg.objective.diffusion_blocks}
    n = B * T
    train, infer, params, memory = {}, {}, {}, {}
    for name, oc in objs.items():
        step = train_flops(mc, oc, B, T)
        train[name] = {"per_step": step, "per_token": {k: v / n for k, v in step.items()}}
        infer[name] = {str(K): inference_flops(mc, oc, K, T) for K in num_steps}
        params[name] = param_counts(mc, _is_db(oc))
        memory[name] = activation_memory(mc, oc, B, T)
    bp, db = train["bptt"]["per_step"], train["diffusion_blocks"]["per_step"]
    return {
        "objective": cfg.objective.name,
        "shape": {"vocab_size": mc.vocab_size, "hidden": mc.hidden, "heads": mc.heads,
                  "mlp_hidden": mc.mlp_hidden,
                  "layers": [mc.prelude_layers, mc.core_layers, mc.coda_layers],
                  "micro_batch_size": B, "seq_len": T, "grad_accum": cfg.train.grad_accum,
                  "tokens_per_step": n, "mean_recurrence": cfg.objective.bptt.mean_recurrence,
                  "backprop_depth": cfg.objective.bptt.backprop_depth,
                  "num_bands": cfg.objective.diffusion_blocks.num_bands,
                  "sigma_per": cfg.objective.diffusion_blocks.sigma_per},
        "params": params,
        "bptt_iterations": expected_iterations(cfg.objective.bptt),
        "train": train,
        "train_ratio": bp["total"] / db["total"],
        # each part's share of the ratio: (BPTT part − DB part) / DB total, plus 1, adds up to it
        "train_ratio_by_part": {k: (bp[k] - db[k]) / db["total"] for k in TRAIN_PARTS},
        "inference": infer,
        "inference_ratio": {K: infer["diffusion_blocks"][K]["total"] / infer["bptt"][K]["total"]
                            for K in infer["bptt"]},
        "activation_memory": memory,
    }


def _fmt(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3f} {unit}"
    return f"{x:.0f} "


def format_report(rep: dict, measured: dict | None = None) -> str:
    s = rep["shape"]
    it = rep["bptt_iterations"]
    out = [f"model: V={s['vocab_size']} h={s['hidden']} heads={s['heads']} mlp={s['mlp_hidden']} "
           f"layers={'/'.join(map(str, s['layers']))}; step = {s['micro_batch_size']}×{s['seq_len']} "
           f"= {s['tokens_per_step']} tokens (× grad_accum {s['grad_accum']} per optimizer step); "
           f"recipe objective: {rep['objective']}",
           f"BPTT: r̄={s['mean_recurrence']} k={s['backprop_depth']}: E[r]={it['r']:.2f}, "
           f"E[grad iters]={it['grad']:.3f}, E[no-grad iters]={it['nograd']:.3f}; "
           f"DB: K={s['num_bands']} bands, σ per {s['sigma_per']}", "",
           "parameters            bptt            db"]
    for k in ("embedding", "prelude", "core", "coda", "final_norm", "sigma_embed", "adaln", "total"):
        out.append(f"  {k:<14}{rep['params']['bptt'][k]:>12,}  {rep['params']['diffusion_blocks'][k]:>12,}")
    out += ["", "training FLOPs (E over r)   bptt/step     db/step   bptt/token    db/token   (bptt−db)/db"]
    for k in (*TRAIN_PARTS, "total"):
        b, d = rep["train"]["bptt"], rep["train"]["diffusion_blocks"]
        share = rep["train_ratio_by_part"].get(k)
        out.append(f"  {k:<24}{_fmt(b['per_step'][k]):>11}  {_fmt(d['per_step'][k]):>11}  "
                   f"{_fmt(b['per_token'][k]):>11} {_fmt(d['per_token'][k]):>11}"
                   + (f"   {share:+8.3f}" if share is not None else ""))
    if measured:
        out += ["", "measured (FlopCounterMode, one real step):"]
        for name, m in measured.items():
            out.append(f"  {name:<16} batch {m['batch']}×{m['seq']}"
                       + (f", r={m['r']}" if m.get("r") else "")
                       + f": measured {_fmt(m['measured'])} analytic {_fmt(m['analytic'])} "
                         f"(measured/analytic {m['measured'] / m['analytic']:.4f})")
    out += ["", "inference FLOPs per new token (KV cache, context = seq_len)",
            "  K        bptt          db     db/bptt   bptt/iter     db/iter"]
    for K in rep["inference"]["bptt"]:
        b, d = rep["inference"]["bptt"][K], rep["inference"]["diffusion_blocks"][K]
        out.append(f"  {K:<4}{_fmt(b['total']):>11} {_fmt(d['total']):>11}  {rep['inference_ratio'][K]:>8.2f}x "
                   f"{_fmt(b['per_iteration']):>11} {_fmt(d['per_iteration']):>11}")
    mem = rep["activation_memory"]
    out += ["", "activation memory per step (estimate, fp32)  "
            f"bptt saved {mem['bptt']['saved'] / 2**20:,.0f} MiB, peak {mem['bptt']['peak'] / 2**20:,.0f} MiB; "
            f"db saved {mem['diffusion_blocks']['saved'] / 2**20:,.0f} MiB, "
            f"peak {mem['diffusion_blocks']['peak'] / 2**20:,.0f} MiB"]
    b, d = rep["train"]["bptt"]["per_token"], rep["train"]["diffusion_blocks"]["per_token"]
    fixed = lambda p: p["prelude"] + p["coda"] + p["head"]
    out += ["", f"BPTT = fixed {_fmt(fixed(b))} + core grad {_fmt(b['core_grad'])} "
                f"+ core no-grad {_fmt(b['core_nograd'])} per token; DB = fixed {_fmt(fixed(d))} "
                f"+ core {_fmt(d['core_grad'])} + AdaLN {_fmt(d['adaln'])} per token",
            f"ratio BPTT/DB training FLOPs per step (E over r): {rep['train_ratio']:.2f}x"]
    return "\n".join(out)


def _measure(cfg, B: int, T: int) -> dict:
    """One real step per objective at batch B × T on this machine's CPU (random tokens)."""
    from huginn_db.model import RecurrentDepthLM
    from huginn_db.objectives import BPTTObjective, DiffusionBlocksObjective, sample_recurrence

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.model.vocab_size, (B, T + 1), generator=g)
    batch = {"input_ids": ids[:, :-1], "target_ids": ids[:, 1:], "loss_weight": torch.ones(B, T)}
    out = {}
    for name, oc, cls in (("bptt", cfg.objective.bptt, BPTTObjective),
                          ("diffusion_blocks", cfg.objective.diffusion_blocks, DiffusionBlocksObjective)):
        model = RecurrentDepthLM(dataclasses.replace(cfg.model, sigma_conditioning=_is_db(oc)))
        r = sample_recurrence(0, oc, cfg.seed) if not _is_db(oc) else None
        measured = measure_step_flops(model, cls(oc, seed=cfg.seed), batch, step=0)
        out[name] = {"batch": B, "seq": T, "r": r, "measured": measured,
                     "analytic": train_flops(cfg.model, oc, B, T, r=r)["total"]}
    return out


def main(argv: list[str] | None = None) -> int:
    """`huginn-db flops RECIPE.yaml [dotted.key=value ...] [--json] [--measure]`."""
    from huginn_db.config import ConfigError, load_config

    ap = argparse.ArgumentParser(prog="huginn-db flops", description="Analytic (and measured) compute "
                                 "per training step and per token for a recipe, both objectives.")
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--measure", action="store_true",
                    help="also count one real step per objective with FlopCounterMode (builds the model: small shapes only)")
    ap.add_argument("--measure-batch", type=int, default=1)
    ap.add_argument("--measure-seq", type=int, default=64, help="capped at the recipe's seq_len")
    args = ap.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.recipe, args.overrides)
    except ConfigError as err:
        print(f"huginn-db flops: error: {err}", file=sys.stderr)
        return 2
    rep = flops_report(cfg)
    measured = _measure(cfg, args.measure_batch, min(args.measure_seq, recipe_seq_len(cfg))) if args.measure else None
    if args.json:
        print(json.dumps({**rep, "measured": measured} if measured else rep, indent=2))
    else:
        print(format_report(rep, measured))
    return 0


def main_peak(argv: list[str] | None = None) -> int:
    """`huginn-db peak [--json] [--seconds S] [--n N] [--device D]`: matmul FLOP/s here."""
    ap = argparse.ArgumentParser(prog="huginn-db peak", description="Measured bf16 and fp32 matmul FLOP/s (MFU denominator).")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seconds", type=float, default=1.0, help="per dtype")
    ap.add_argument("--n", type=int, default=None, help="matrix size (default 1024 on CPU, 8192 on CUDA)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    peaks = {name: measure_peak(dt, args.n, args.seconds, args.device)
             for name, dt in (("bf16", torch.bfloat16), ("fp32", torch.float32))}
    if args.json:
        print(json.dumps({"device": args.device, "threads": torch.get_num_threads(), "flops_per_s": peaks}))
    else:
        for name, v in peaks.items():
            print(f"{name} matmul on {args.device} ({torch.get_num_threads()} threads): {v / 1e9:,.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
