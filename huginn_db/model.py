"""Huginn-style recurrent-depth transformer: prelude → one weight-shared core looped → coda.

    e   = P(embed(x))                      prelude, l_P sandwich blocks
    s_i = R(adapter([s_{i-1}, e]))         core, l_R blocks, the same weights every iteration
    p   = head(norm(C(norm(s_r))))         coda, l_C blocks, tied LM head

Details follow Geiping et al. 2025 (raven_modeling_minimal.py): sandwich norm, RMSNorm,
RoPE, gated-SiLU MLP, biases on q/k only, tied embeddings scaled by √h, "takase" init and a
random initial state. With `sigma_conditioning` the core and coda blocks carry AdaLN-Zero
modulation from a σ embedding (DiT), so the same network can act as a DiffusionBlocks
denoiser; the modulation is zero-initialised, i.e. training starts from the plain block.

Incremental decoding: a `KVCache` passed to encode/core_step/decode/recur/denoise keeps the
keys and values of every attention call (prelude layer, core layer × iteration, coda layer ×
denoiser evaluation) for the positions already seen, so a pass over new positions attends
to them without recomputing them; RoPE is applied at the new positions' absolute offsets.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from huginn_db.attention import _cached_backend, select_attention_backend, xformers_available  # noqa: F401
from huginn_db.db_passes import self_condition_input, unrolled_denoise
from huginn_db.kv_cache import KVCache
from huginn_db.model_config import AttentionBackend, ModelConfig  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


# --- building blocks -----------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()  # norm statistics in fp32 even under bf16 autocast
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def _chunk_ce(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row CE of the tied head's logits x·Wᵀ; log-softmax in fp32 (bf16 logits lose bits)."""
    return F.cross_entropy(F.linear(x, weight).float(), labels, reduction="none")


def rope_cache(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / cfg.rope_base ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim)
    ang = torch.outer(torch.arange(cfg.context).float(), inv)  # (T, D/2)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, D); rotate interleaved pairs (Huginn's complex-multiply convention)."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)
    return out.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden, bias=False)
        self.qk_bias = nn.Parameter(torch.zeros(2 * cfg.hidden))  # Huginn: biases on q and k only
        self.proj = nn.Linear(cfg.hidden, cfg.hidden, bias=False)

    def backend(self, device: torch.device) -> str:
        return _cached_backend(self.cfg.attention, device.type)

    def forward(self, x: torch.Tensor, cos, sin, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, D = self.cfg.heads, self.cfg.head_dim
        qkv = self.qkv(x)
        qk = qkv[..., : 2 * self.cfg.hidden] + self.qk_bias.to(qkv.dtype)
        q, k = qk.view(B, T, 2, H, D).unbind(2)
        v = qkv[..., 2 * self.cfg.hidden :].view(B, T, H, D)
        p = cache.offset if cache is not None else 0  # absolute position of the first new token
        q, k = apply_rope(q, cos[p : p + T], sin[p : p + T]), apply_rope(k, cos[p : p + T], sin[p : p + T])
        if cache is not None:
            k, v = cache.update(k, v)
        if k.shape[1] > T:
            # new queries after cached keys: causal mask aligned bottom-right (query i sees keys
            # ≤ p + i); decoding-sized, so SDPA serves it on every backend
            mask = torch.ones(T, k.shape[1], dtype=torch.bool, device=x.device).tril(k.shape[1] - T)
            y = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
            ).transpose(1, 2)
        elif self.backend(x.device) == "xformers":
            import xformers.ops as xops

            y = xops.memory_efficient_attention(q, k, v, attn_bias=xops.LowerTriangularMask())
        else:
            y = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
            ).transpose(1, 2)
        return self.proj(y.reshape(B, T, H * D))


class GatedMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.hidden, 2 * cfg.mlp_hidden, bias=False)
        self.proj = nn.Linear(cfg.mlp_hidden, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.fc(x).chunk(2, dim=-1)
        return self.proj(F.silu(a) * b)


class SandwichBlock(nn.Module):
    """x̂ = n₂(x + Attn(n₁(x))); x = n₄(x̂ + MLP(n₃(x̂))), with optional AdaLN-Zero."""

    def __init__(self, cfg: ModelConfig, conditioned: bool):
        super().__init__()
        self.n1, self.n2, self.n3, self.n4 = (RMSNorm(cfg.hidden, cfg.norm_eps) for _ in range(4))
        self.attn = Attention(cfg)
        self.mlp = GatedMLP(cfg)
        # shift/scale/gate for attention and MLP; zero weights ⇒ exactly the plain block at init
        self.ada = nn.Linear(cfg.sigma_embed_dim, 6 * cfg.hidden) if conditioned else None

    def forward(self, x, cos, sin, cond: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        if self.ada is None or cond is None:
            x = self.n2(x + self.attn(self.n1(x), cos, sin, cache))
            return self.n4(x + self.mlp(self.n3(x)))
        sh_a, sc_a, g_a, sh_m, sc_m, g_m = self.ada(F.silu(cond)).chunk(6, dim=-1)
        x = self.n2(x + (1 + g_a) * self.attn(self.n1(x) * (1 + sc_a) + sh_a, cos, sin, cache))
        return self.n4(x + (1 + g_m) * self.mlp(self.n3(x) * (1 + sc_m) + sh_m))


class SigmaEmbedding(nn.Module):
    """Sinusoidal features of c_noise = ¼·ln σ → 2-layer MLP (DiT's timestep embedder)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=c_noise.device) / half)
        ang = c_noise.float()[..., None] * 1000.0 * freqs  # EDM/DiT scale c_noise up before sinusoids
        return self.mlp(torch.cat([ang.cos(), ang.sin()], dim=-1))


class CoreBlock(nn.Module):
    """One recurrence iteration: adapter(concat(state, e)) → l_R sandwich blocks.

    A module of its own so every loop iteration is one forward call (counted by tests and
    by the FLOP accounting) and ZeRO-3 sees the shared weights as one unit.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.adapter = nn.Linear(2 * cfg.hidden, cfg.hidden, bias=False)
        self.layers = nn.ModuleList(SandwichBlock(cfg, cfg.sigma_conditioning) for _ in range(cfg.core_layers))
        self.self_cond = nn.Linear(cfg.hidden, cfg.hidden, bias=False) if cfg.self_condition else None

    def forward(self, state, e, cos, sin, cond=None, cache: KVCache | None = None, prev=None):
        if prev is not None:  # self-conditioning: the previous iteration's output, as a channel into this one
            state = state + self.self_cond(prev)
        x = self.adapter(torch.cat([state, e], dim=-1))
        for layer in self.layers:
            x = layer(x, cos, sin, cond, cache)
        return x


# --- the model -----------------------------------------------------------------------------


class RecurrentDepthLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.hidden % cfg.heads or cfg.head_dim % 2:
            raise ValueError(f"hidden={cfg.hidden} must split into {cfg.heads} heads of even size")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.prelude = nn.ModuleList(SandwichBlock(cfg, False) for _ in range(cfg.prelude_layers))
        self.core = CoreBlock(cfg)
        self.coda = nn.ModuleList(SandwichBlock(cfg, cfg.sigma_conditioning) for _ in range(cfg.coda_layers))
        self.ln_f = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.sigma_embed = SigmaEmbedding(cfg.sigma_embed_dim) if cfg.sigma_conditioning else None
        cos, sin = rope_cache(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._compiled: dict = {}  # see compile_core
        # forward's autocast dtype (None: fp32), set by the trainer from train.precision; here, not
        # around engine(...), because DeepSpeed >= 0.17.6 turns an outer CUDA autocast off
        self.autocast_dtype: torch.dtype | None = None
        self.reset_parameters()

    # takase init (Huginn): std √(2/5h), output projections / √(2·l_eff), truncated at ±3σ
    def reset_parameters(self) -> None:
        std = math.sqrt(2.0 / (5.0 * self.cfg.hidden))
        out_std = std / math.sqrt(2.0 * self.cfg.effective_layers(self.cfg.init_recurrence))
        for name, p in self.named_parameters():
            if name.startswith("sigma_embed"):
                continue  # default nn.Linear init, as DiT
            if name.endswith((".ada.weight", ".ada.bias", "self_cond.weight", "qk_bias")):
                nn.init.zeros_(p)  # AdaLN-Zero; self-conditioning starts as plain DB; q/k biases
            elif p.dim() == 1:  # only RMSNorm weights are left
                nn.init.ones_(p)
            else:
                s = out_std if name.endswith("proj.weight") else std
                nn.init.trunc_normal_(p, std=s, a=-3 * s, b=3 * s)

    @property
    def emb_scale(self) -> float:
        return math.sqrt(self.cfg.hidden)

    def num_parameters(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())
        return {
            "embedding": self.wte.weight.numel(),
            "prelude": count(self.prelude),
            "core": count(self.core),
            "coda": count(self.coda),
            "final_norm": count(self.ln_f),
            "sigma_embed": count(self.sigma_embed) if self.sigma_embed is not None else 0,
            "total": sum(p.numel() for p in self.parameters()),
        }

    # -- pieces, used by the objectives and samplers --
    def encode(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Prelude output e, computed once per sequence and injected into every iteration.

        With a cache, input_ids are the new positions after the cached ones and a pass starts.
        """
        past = cache.length if cache is not None else 0
        if past + input_ids.shape[1] > self.cfg.context:
            raise ValueError(f"sequence length {past + input_ids.shape[1]} exceeds model.context={self.cfg.context}")
        if cache is not None:
            cache.start(input_ids.shape[1])
        x = self.wte(input_ids) * self.emb_scale
        for block in self.prelude:
            x = block(x, self.rope_cos, self.rope_sin, cache=cache)
        return x

    def initial_state(self, e: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """s₀ ~ truncated N(0, 2/5) of e's shape, drawn on the generator's device (a CPU
        generator cannot fill a CUDA tensor) and moved to e's."""
        s = torch.empty(e.shape, dtype=torch.float32, device=generator.device if generator is not None else e.device)
        std = math.sqrt(2.0 / 5.0)
        nn.init.trunc_normal_(s, std=std, a=-3 * std, b=3 * std, generator=generator)
        return s.to(e.device, e.dtype)

    def compile_core(self) -> None:
        """torch.compile the core block for cache-free passes (training; decoding with a KVCache keeps the
        eager one: its shapes change every token), held in a dict so state_dict keys stay the same."""
        torch.compiler.assume_constant_result(_cached_backend)  # not at import: it loads torch._dynamo (1 s)
        self._compiled["core"] = torch.compile(self.core)

    def core_step(self, state, e, cond=None, cache: KVCache | None = None, prev=None) -> torch.Tensor:
        core = self._compiled.get("core", self.core) if cache is None else self.core
        if cache is not None:
            cache.iteration()
        return core(state, e, self.rope_cos, self.rope_sin, cond, cache, prev)

    def decode(
        self, s: torch.Tensor, cond=None, cache: KVCache | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Recurrence output → final norm → coda → final norm → tied head: logits (B, T, V),
        or with `labels` (B, T) the per-position cross-entropy (B, T) in fp32."""
        x = self.ln_f(s)
        for block in self.coda:
            x = block(x, self.rope_cos, self.rope_sin, cond, cache)
        x = self.ln_f(x)
        if labels is None:
            return F.linear(x, self.wte.weight)
        return self.cross_entropy(x, labels)

    def cross_entropy(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Next-token CE of final hidden states x (B, T, h) against labels (B, T), fp32.

        With `loss_chunk` > 0 the head and log-softmax run over chunks of that many positions
        under activation checkpointing: autograd keeps only x, and each chunk's logits are
        rebuilt in the backward (one more head forward, counted by compute.train_flops).
        """
        n, chunk = labels.numel(), self.cfg.loss_chunk
        if chunk <= 0 or chunk >= n:
            return _chunk_ce(x.flatten(0, 1), self.wte.weight, labels.flatten()).view_as(labels)
        xs, ls = x.flatten(0, 1).split(chunk), labels.flatten().split(chunk)
        grad = torch.is_grad_enabled()
        ce = [
            torch.utils.checkpoint.checkpoint(_chunk_ce, xc, self.wte.weight, lc, use_reentrant=False)
            if grad
            else _chunk_ce(xc, self.wte.weight, lc)
            for xc, lc in zip(xs, ls)
        ]
        return torch.cat(ce).view_as(labels)

    def recur(
        self,
        input_ids,
        num_steps: int,
        num_grad_steps: int | None = None,
        generator=None,
        state: torch.Tensor | None = None,
        cache: KVCache | None = None,
        labels=None,
        return_state: bool = False,
        damping: float = 0.0,
        step_labels=None,
    ):
        """Huginn's loop: num_steps − num_grad_steps iterations without grad, then the rest with.

        state: the initial state s₀ (B, T, h); drawn from `generator` when not given.
        labels: return the per-position CE instead of the logits (see decode); step_labels (B, k, T):
        decode every grad iteration against its own labels (the oracle), CE (B, k, T).
        return_state: also return the last state s_r (what deep supervision carries on).
        damping: a, every iteration is s ← a·s + (1 − a)·R(s, e) (Equilibrium Reasoners; 0: Huginn's).
        """
        e = self.encode(input_ids, cache)
        k = num_steps if num_grad_steps is None else min(num_grad_steps, num_steps)
        s = self.initial_state(e, generator) if state is None else state.to(e.device, e.dtype)

        def step(s, ckpt=False):
            if ckpt:
                f = torch.utils.checkpoint.checkpoint(self.core_step, s, e, use_reentrant=False)
            else:
                f = self.core_step(s, e, cache=cache)
            return f if damping == 0 else damping * s + (1 - damping) * f  # a = 0: the plain loop, bit for bit

        with torch.no_grad():  # what these iterations produce needs no detach: it has no graph
            for _ in range(num_steps - k):
                s = step(s)
        ckpt, ces = self.cfg.checkpoint_core and torch.is_grad_enabled() and cache is None, []
        for j in range(k):
            s = step(s, ckpt)
            if step_labels is not None:  # every iteration decoded toward its own target (oracle)
                ces.append(self.decode(s, labels=step_labels[:, j]))
        out = torch.stack(ces, 1) if ces else self.decode(s, cache=cache, labels=labels)
        return (out, s) if return_state else out

    def clean_embeddings(self) -> torch.Tensor:
        """Ê: unit-norm token embeddings, the space the DiffusionBlocks state z lives in."""
        return F.normalize(self.wte.weight.float(), dim=-1)

    def denoise(
        self, e, z, sigma, c_in, cache: KVCache | None = None, labels=None, prev=None, return_latent: bool = False
    ):
        """One σ-conditioned pass: logits of the denoiser D(z; σ, context).

        sigma: (B, 1) per-sequence or (B, T) per-token noise level; c_in its preconditioner.
        prev: the self-conditioning input (the previous iteration's core output or D; None: 0).
        return_latent: also return the core output (what `prev` carries in latent mode).
        """
        if self.sigma_embed is None:
            raise RuntimeError("this model was built without sigma_conditioning; it cannot denoise")
        cond = self.sigma_embed(0.25 * torch.log(sigma))  # c_noise = ¼ ln σ; (B, 1|T, C)
        x_in = (c_in[..., None] * z).to(e.dtype)
        h = self.core_step(x_in, e, cond, cache, prev)
        out = self.decode(h, cond, cache, labels)
        return (out, h) if return_latent else out

    def forward(self, input_ids, **kw):
        """Engine entry point (`train_pass`), under autocast to `autocast_dtype` when it is set."""
        if self.autocast_dtype is None:
            return self.train_pass(input_ids, **kw)
        with torch.autocast(input_ids.device.type, dtype=self.autocast_dtype):
            return self.train_pass(input_ids, **kw)

    def train_pass(
        self,
        input_ids,
        *,
        num_steps=None,
        num_grad_steps=None,
        generator=None,
        target_ids=None,
        sigma=None,
        noise=None,
        c_in=None,
        labels=None,
        self_condition="none",
        prev_rows=None,
        prev_sigma=None,
        prev_c_in=None,
        state=None,
        return_state=False,
        unroll=None,
        damping=0.0,
        step_labels=None,
    ):
        """A recurrent pass (num_steps; from `state` when given) or one DiffusionBlocks training pass
        (`unroll`: the kwargs of db_passes.unrolled_denoise, k sampler steps from z instead of one).

        The DB pass builds z = Ê[target] + σ·noise here, inside forward, so that under ZeRO-3
        the (partitioned) embedding is gathered when it is read. With `labels` both return the
        per-position CE (B, T) instead of logits, computed here for the same reason.
        """
        if target_ids is not None:
            y = self.clean_embeddings().detach()[target_ids]  # no gradient into the target
            e = self.encode(input_ids)
            prev = None
            if self.cfg.self_condition and self_condition != "none":
                # rows in prev_rows get the output of a no-grad first pass at prev_sigma, the rest 0
                prev = torch.zeros(e.shape, dtype=torch.float32, device=e.device)
                if prev_rows is not None and prev_rows.numel():
                    r = prev_rows
                    sub = self_condition_input(self, e[r], y[r], noise[r], prev_sigma[r], prev_c_in[r], self_condition)
                    prev = prev.index_copy(0, r, sub)
            z = y + sigma[..., None] * noise
            if unroll is not None:  # k Euler steps of the sampler from z (huginn_db.db_passes)
                return unrolled_denoise(self, e, z, labels, prev=prev, self_condition=self_condition, **unroll)
            return self.denoise(e, z, sigma, c_in, labels=labels, prev=prev)
        args = (generator, state, None, labels, return_state, damping, step_labels)
        return self.recur(input_ids, num_steps, num_grad_steps, *args)
