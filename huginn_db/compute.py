"""Analytic compute cost of the looped model: parameters, training and inference FLOPs, memory.

Every objective describes its own loop (`Objective.core_iterations`, `sigma_evaluations`,
`decode_evaluations`, `saved_core_iterations`); this module prices the pieces. Measured
counterparts: `huginn_db.measure`; the `huginn-db flops` / `peak` reports: `huginn_db.flops`.

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
* BPTT: r = Poisson(e^τ) + 1, τ ~ N(ln r̄ − s²/2, s) (`objectives.bptt.sample_recurrence`), so
  E[r] = r̄ + 1; min(k, r) iterations with grad, r − min(k, r) without. The cost is linear in
  both counts, so E[FLOPs] = fixed + E[min(k, r)]·grad_iter + E[r − min(k, r)]·nograd_iter, with
  E[min(k, r)] = Σ_{j≤k} P(r ≥ j) from the exact pmf (Gauss–Hermite over τ of the Poisson pmf).
* DiffusionBlocks: one σ-conditioned pass prelude → core (once) → coda → head, plus AdaLN:
  each conditioned block (core and coda) has `ada` = Linear(C, 6h) applied once per σ, i.e.
  per sequence (`sigma_per: sequence`) or per token (`token`), and the σ-embedding MLP (two
  C×C layers) runs once per σ as well. Unrolled (`unroll` k > 1), a row in band b runs
  min(k, b + 1) such passes with gradient (`grad_decodes`), and between them a softmax·Ê
  readout: V·h forward plus the gradient w.r.t. the probabilities only (Ê is detached).
* Deep supervision: n = `nograd_steps` core iterations without grad and k = `grad_steps` with,
  from the carried state, then coda and head once; k core iterations' activations are saved.
  Its `damping` and `state_noise` are element-wise, so they add no matmul FLOPs.

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

import dataclasses

from huginn_db.model import ModelConfig
from huginn_db.objectives import for_config

INFERENCE_STEPS = (1, 4, 8, 32)
TRAIN_PARTS = ("prelude", "core_grad", "core_nograd", "coda", "head", "adaln", "recompute")


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
        "core": 2 * h * h + mc.core_layers * (block + ada) + (h * h if mc.self_condition else 0),
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
    def self_cond(self) -> int:  # the core's h×h self-conditioning projection
        return 2 * self.n * self.mc.hidden**2 if self.mc.self_condition else 0

    @property
    def sigma_layer(self) -> int:  # one of the σ-embedding MLP's two C×C layers
        return 2 * self.n_sigma * self.mc.sigma_embed_dim**2


# --- training FLOPs ------------------------------------------------------------------------


def _as_built(mc: ModelConfig, obj, obj_cfg) -> ModelConfig:
    """The model config with the fields the objective decides; `mc` itself when it already has
    them (the trainer's resolved config: no copy on its per-micro-step call)."""
    opts = obj.model_options(obj_cfg)
    if all(getattr(mc, k) == v for k, v in opts.items()):
        return mc
    return dataclasses.replace(mc, **opts)


def _chunked_loss(mc: ModelConfig, n: int) -> bool:
    return 0 < mc.loss_chunk < n  # model.cross_entropy takes the one-pass path otherwise


def train_flops(
    mc: ModelConfig, obj_cfg, batch: int, seq: int, r: int | None = None, checkpoint_core: bool | None = None
) -> dict[str, float]:
    """Training FLOPs of one micro-step (forward + backward) on `batch` sequences of `seq`
    tokens, per part (TRAIN_PARTS) and `total`.

    obj_cfg: a registered objective's config. r: the core iterations actually drawn (BPTT), or
    None for the expectation over the objective's depth law; a one-pass objective ignores it.
    `checkpoint_core` (default: the model's) charges the grad iterations an extra forward
    (activation-checkpoint recompute); a chunked loss (`mc.loss_chunk`) charges the head one.
    """
    obj = for_config(obj_cfg)
    mc = _as_built(mc, obj, obj_cfg)
    if checkpoint_core is None:
        checkpoint_core = mc.checkpoint_core
    f = _Forward(mc, batch * seq, seq, obj.sigma_evaluations(obj_cfg, batch, seq))
    block_train = 3 * f.block_mm + 3.5 * f.block_attn  # fwd + bwd (SDPA backward = 2.5×)
    core_fwd = f.adapter + mc.core_layers * (f.block_mm + f.block_attn)
    core_train = 3 * f.adapter + mc.core_layers * block_train
    grad_iters, nograd_iters = obj.core_iterations(obj_cfg, r)
    decodes = obj.nograd_decodes(obj_cfg, r)  # no-grad coda + head + softmax·Ê passes (self-conditioning on D)
    grad_decodes = obj.grad_decodes(obj_cfg, r)  # > 1: DB's unrolled steps, readouts between them
    readouts = obj.grad_readouts(obj_cfg, r)  # softmax·Ê forward + its gradient w.r.t. the probabilities (Ê detached)
    adaln = 0.0
    if obj.sigma_conditioning:  # ada per conditioned block (fwd + bwd); σ MLP: layer 2 fwd+bwd, layer 1 fwd + grad_W
        adaln = grad_decodes * (3 * (mc.core_layers + mc.coda_layers) * f.ada + (3 + 2) * f.sigma_layer)
        # no-grad passes: their σ-MLP and the ada layers they run, forward only
        adaln += nograd_iters * (mc.core_layers * f.ada + 2 * f.sigma_layer) + decodes * mc.coda_layers * f.ada
    parts = {
        "prelude": mc.prelude_layers * block_train,
        # self-conditioning projection: forward + weight gradient (its input is detached)
        "core_grad": grad_iters * (core_train + 2 * f.self_cond),
        "core_nograd": nograd_iters * core_fwd,
        "coda": grad_decodes * mc.coda_layers * block_train + decodes * mc.coda_layers * (f.block_mm + f.block_attn),
        "head": 3 * grad_decodes * f.head + 2 * readouts * f.head + decodes * 2 * f.head,
        "adaln": adaln,
        # the unrolled pass keeps every step's logits (D needs them): no chunked loss to recompute
        "recompute": (
            (grad_iters * core_fwd if checkpoint_core else 0.0)
            + (f.head if _chunked_loss(mc, batch * seq) and grad_decodes == 1 else 0.0)
        ),
    }
    parts["total"] = sum(parts.values())
    return parts


# --- inference FLOPs -----------------------------------------------------------------------


def inference_flops(
    mc: ModelConfig, obj_cfg, num_steps: int, context: int, sampler: str | None = None
) -> dict[str, float]:
    """FLOPs to produce one new token with a KV cache, at `num_steps` loop iterations, the new
    token attending to `context` cached positions (its own included) in every layer.

    A latent recurrence (Huginn, BPTT-trained): prelude once, K core iterations, coda + head
    once. A denoiser (DiffusionBlocks): prelude once; each of its evaluations
    (`Objective.decode_evaluations`: Euler K, Heun 2K − 1) runs σ-MLP + core + coda (each with
    AdaLN) + head, then D = softmax(logits)·Ê (`readout`, V·h). `per_iteration` is the cost of
    one more loop iteration.
    """
    obj = for_config(obj_cfg)
    mc = _as_built(mc, obj, obj_cfg)
    f = _Forward(mc, 1, context, 1)
    block = f.block_mm + f.block_attn
    core = f.adapter + mc.core_layers * block
    coda = mc.coda_layers * block
    evals = obj.decode_evaluations(obj_cfg, num_steps, sampler)
    if not evals:
        parts = {
            "prelude": mc.prelude_layers * block,
            "core": num_steps * core,
            "coda": coda,
            "head": f.head,
            "adaln": 0,
            "readout": 0,
        }
        parts["total"] = sum(parts.values())
        parts["per_iteration"] = core
        return parts
    ada = ((mc.core_layers + mc.coda_layers) * f.ada + 2 * f.sigma_layer) if obj.sigma_conditioning else 0
    parts = {
        "prelude": mc.prelude_layers * block,
        "core": evals * core + (evals - 1) * f.self_cond,  # the first evaluation has no self-conditioning input
        "coda": evals * coda,
        "head": evals * f.head,
        "adaln": evals * ada,
        "readout": evals * f.head,
    }
    parts["total"] = sum(parts.values())
    parts["per_iteration"] = (parts["total"] - parts["prelude"]) / num_steps
    return parts


# --- activation memory ---------------------------------------------------------------------


def activation_memory(mc: ModelConfig, obj_cfg, batch: int, seq: int, bytes_per_element: int = 4) -> dict[str, int]:
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
    obj = for_config(obj_cfg)
    mc = _as_built(mc, obj, obj_cfg)
    h, m, C, V, H = mc.hidden, mc.mlp_hidden, mc.sigma_embed_dim, mc.vocab_size, mc.heads
    n = batch * seq
    n_sigma = obj.sigma_evaluations(obj_cfg, batch, seq)
    plain = n * (16 * h + 4 * m + H + 4)
    cond = plain + (n * 4 * h + n_sigma * (4 * h + C) if obj.sigma_conditioning else 0)
    iters = obj.saved_core_iterations(obj_cfg)
    elements = (
        mc.prelude_layers * plain
        + iters * (n * 2 * h + mc.core_layers * cond)
        + mc.coda_layers * cond
        + n * 5 * h
        + n_sigma * 4 * C
        + (n * h if mc.self_condition else 0)  # the self-conditioning input, kept for its weight gradient
    )
    if _chunked_loss(mc, n):
        saved = elements * bytes_per_element + n * 8  # + int64 targets
        transient = 4 * mc.loss_chunk * V * 4
    else:
        saved = elements * bytes_per_element + n * V * 4 + n * 8  # + fp32 log-softmax, int64 targets
        transient = 2 * n * V * 4
    return {
        "saved": saved,
        "backward_transient": transient,
        "param_grads": param_counts(mc, obj.sigma_conditioning)["total"] * 4,
        "peak": saved + transient,
    }
