"""The looped model's shape and options (`model:` in a recipe); the model itself is model.py."""

from __future__ import annotations

import typing
from dataclasses import dataclass

# ModelConfig.attention's choices
AttentionBackend = typing.Literal["auto", "sdpa", "xformers"]


@dataclass
class ModelConfig:
    """Shape and numerics of the recurrent-depth transformer (prelude → looped core → coda)."""

    vocab_size: int = 32000
    """Token vocabulary; the trainer sets it from the tokenizer (recorded in config.yaml)."""
    hidden: int = 512
    """Residual width h: heads × an even head size (RoPE rotates pairs of channels)."""
    heads: int = 8
    """Attention heads; head size = hidden / heads."""
    mlp_hidden: int = 2048
    """Hidden width of the gated-SiLU MLP."""
    prelude_layers: int = 2
    """l_P: blocks run once on the embeddings, before the loop."""
    core_layers: int = 4
    """l_R: blocks of the weight-shared core, looped every iteration."""
    coda_layers: int = 2
    """l_C: blocks run once after the loop, before the tied LM head."""
    context: int = 256
    """Longest sequence in tokens (the RoPE table's length)."""
    rope_base: float = 50_000.0
    """RoPE frequency base θ."""
    norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    init_recurrence: int = 32
    """r̄ used by the takase init to size output projections."""
    sigma_conditioning: bool = False
    """AdaLN-Zero in core + coda (set by the DB objective)."""
    self_condition: bool = False
    """The core also reads the previous iteration's output through a zero-initialised h×h
    projection added to its state input (set by DB with self_condition latent|prediction)."""
    sigma_embed_dim: int = 128
    """Width of the σ embedding behind AdaLN-Zero (cos and sin halves, so even)."""
    attention: AttentionBackend = "auto"
    """Attention kernel: auto (xformers on CUDA tensors where it imports and a probe call matches
    SDPA, else SDPA with one warning) | sdpa | xformers (fails where the probe does)."""
    checkpoint_core: bool = False
    """BPTT: recompute each grad core iteration in backward instead of keeping its activations
    (activation checkpointing per iteration, as Huginn trains); costs one more core forward."""
    loss_chunk: int = 0
    """Training loss over chunks of this many positions, each chunk's logits recomputed in the
    backward instead of kept: no B×T×V tensor lives across the step (0: one full-logits pass)."""
    compile_core: bool = False
    """torch.compile the core block (the looped part) in training; measured on this repo's CPU:
    no gain for DB, ~3 % for BPTT, 10–35 s of compile per process — so off by default."""

    def __post_init__(self):
        # messages name the bare field; the recipe loader prefixes the section ("model.")
        for name, low in (
            ("vocab_size", 2),
            ("context", 2),
            ("heads", 1),
            ("mlp_hidden", 1),
            ("prelude_layers", 0),
            ("core_layers", 1),
            ("coda_layers", 0),
            ("init_recurrence", 1),
        ):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.hidden < 2 * self.heads or self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise ValueError(f"hidden={self.hidden} must split into heads={self.heads} heads of even size")
        if not self.rope_base > 0:
            raise ValueError(f"rope_base must be > 0, got {self.rope_base}")
        if not self.norm_eps >= 0:
            raise ValueError(f"norm_eps must be >= 0, got {self.norm_eps}")
        if self.sigma_embed_dim < 2 or self.sigma_embed_dim % 2:
            raise ValueError(f"sigma_embed_dim must be even and >= 2 (cos and sin halves), got {self.sigma_embed_dim}")
        if self.attention not in typing.get_args(AttentionBackend):
            raise ValueError(f"attention must be {'|'.join(typing.get_args(AttentionBackend))}, got {self.attention!r}")
        if self.loss_chunk < 0:
            raise ValueError(f"loss_chunk must be >= 0 (0: full logits), got {self.loss_chunk}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def effective_layers(self, r: int) -> int:
        return self.prelude_layers + self.core_layers * r + self.coda_layers


# --- attention backend ---------------------------------------------------------------------
