"""DiffusionBlocks (SPEC §3): every loop iteration is one Euler step of the probability-flow
ODE over one equi-probability σ-band; training is one σ-conditioned denoiser pass per step, and
inference runs K sampler steps from σ_max to σ_min.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from huginn_db import diffusion as dm
from huginn_db.model import KVCache
from huginn_db.objectives.base import Objective, seed_of, unwrap
from huginn_db.objectives.registry import register


@dataclass
class DiffusionBlocksConfig:
    p_mean: float = 1.5
    """Mean of log σ during training; the equi-probability bands follow whatever is set here."""
    p_std: float = 1.0
    """Standard deviation of log σ during training."""
    sigma_min: float = 0.002
    """Smallest σ: where the sampler ends."""
    sigma_max: float = 80.0
    """Largest σ: where the sampler starts (z₀ = σ_max·ε)."""
    sigma_data: float = 0.5
    """σ_data of the EDM preconditioning."""
    num_bands: int = 8
    """K: training strata and the default number of inference iterations."""
    sigma_per: Literal["sequence", "token"] = "sequence"
    """One σ per training sequence, or one per token."""
    loss_weighting: Literal["uniform", "edm"] = "uniform"
    """uniform, or EDM's λ(σ) normalised to mean 1 in the batch."""
    sampler: Literal["euler", "heun"] = "euler"
    """Inference ODE solver."""

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.num_bands < 1 or not self.p_std > 0 or not self.sigma_data > 0:
            raise ValueError("num_bands must be >= 1 and p_std, sigma_data > 0")
        for key, allowed in (
            ("sigma_per", ("sequence", "token")),
            ("loss_weighting", ("uniform", "edm")),
            ("sampler", ("euler", "heun")),
        ):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be {'|'.join(allowed)}, got {getattr(self, key)!r}")

    def sigma(self) -> dm.SigmaConfig:
        return dm.SigmaConfig(self.sigma_min, self.sigma_max, self.sigma_data, self.p_mean, self.p_std)


@register
class DiffusionBlocksObjective(Objective):
    """DiffusionBlocks: one σ-conditioned denoiser pass per step; K Euler steps over σ-bands at inference."""

    name = "diffusion_blocks"
    short = "DB"
    color = "tab:blue"
    config = DiffusionBlocksConfig
    sigma_conditioning = True
    # after K Euler steps σ is tiny and the logits describe one sample, so likelihoods default
    # to the context-only prediction (the σ_max pass)
    scores = ("context", "final")
    samplers = ("euler", "heun")

    def __init__(self, cfg: DiffusionBlocksConfig, seed: int = 0):
        super().__init__(cfg, seed)
        self.sig = cfg.sigma()

    @property
    def default_num_steps(self) -> int:
        return self.cfg.num_bands

    def loss(self, model, batch, step: int, slot: int = 0):
        ids, tgt = batch["input_ids"], batch["target_ids"]
        B, T = ids.shape
        g = torch.Generator().manual_seed(seed_of(self.seed, slot, 2))
        n = B if self.cfg.sigma_per == "sequence" else B * T
        # rotate the band offset with the slot so small batches still visit every band
        sigma, band = dm.sample_sigma(n, self.sig, self.cfg.num_bands, g, offset=slot * n)
        sigma = sigma.view(B, -1).to(ids.device)  # (B, 1) or (B, T)
        # z = y + σ·ε with y the unit-norm embedding of the next token (built inside forward)
        eps = torch.randn(B, T, unwrap(model).cfg.hidden, generator=g).to(ids.device)
        w = batch["loss_weight"]
        ce = model(ids, target_ids=tgt, sigma=sigma, noise=eps, c_in=dm.c_in(sigma, self.sig), labels=tgt) * w
        if self.cfg.loss_weighting == "edm":
            lam = dm.edm_weight(sigma, self.sig)
            ce = ce * (lam / lam.mean())
        loss = ce.sum() / w.sum().clamp(min=1)
        ls = sigma.log()
        return loss, {
            "sigma_mean": float(sigma.mean()),
            "log_sigma_mean": float(ls.mean()),
            "log_sigma_std": float(ls.std()) if ls.numel() > 1 else 0.0,
            "bands": torch.bincount(band, minlength=self.cfg.num_bands).tolist(),
        }

    def noise(self, model, batch: int, length: int, generator=None) -> torch.Tensor:
        """ε for `length` positions (CPU, float32): the sampler starts from z₀ = σ_max·ε."""
        return torch.randn(batch, length, unwrap(model).cfg.hidden, generator=generator)

    @torch.no_grad()
    def logits(
        self,
        model,
        input_ids,
        num_steps: int | None = None,
        generator=None,
        sampler: str | None = None,
        return_trajectory: bool = False,
        noise: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ):
        """K-step sampler from σ_max to σ_min; one loop iteration per equi-probability band.

        Returns the logits of the last denoiser evaluation. K=1 is the context-only prediction
        (a single pass at σ_max). noise: ε (default: drawn from `generator`); cache: see decoding.
        Every position runs the same σ schedule and attention is causal, so a position's z
        trajectory depends on earlier positions only: with a cache the new positions' trajectories
        equal those of an uncached pass over the whole sequence given the same ε.
        """
        m = unwrap(model)
        sampler = sampler or self.cfg.sampler
        K = num_steps or self.default_num_steps
        e = m.encode(input_ids, cache)
        B, T = input_ids.shape
        E_hat = m.clean_embeddings()
        sched = dm.inference_schedule(K, self.sig)
        eps = self.noise(m, B, T, generator) if noise is None else noise
        z = sched[0] * eps.to(e.device)
        last = {}

        def denoise(zz, s):
            sigma = torch.full((B, 1), s, device=e.device)
            last["logits"] = m.denoise(e, zz, sigma, dm.c_in(sigma, self.sig), cache)
            return torch.softmax(last["logits"].float(), -1) @ E_hat  # D = E_p[Ê]

        traj = []
        for k in range(K):
            s, s_next = sched[k], sched[k + 1]
            D = denoise(z, s)
            if sampler == "heun" and k < K - 1:
                z = dm.heun_step(z, D, s, s_next, denoise)
            else:
                z = dm.euler_step(z, D, s, s_next)
            traj.append(last["logits"])
        return traj if return_trajectory else last["logits"]

    @staticmethod
    def core_iterations(cfg, r=None) -> tuple[float, float]:
        return 1.0, 0.0

    @staticmethod
    def saved_core_iterations(cfg) -> int:
        return 1

    @staticmethod
    def sigma_evaluations(cfg: DiffusionBlocksConfig, batch: int, seq: int) -> int:
        return batch * seq if cfg.sigma_per == "token" else batch

    @staticmethod
    def decode_evaluations(cfg: DiffusionBlocksConfig, num_steps: int, sampler: str | None = None) -> int:
        return 2 * num_steps - 1 if (sampler or cfg.sampler) == "heun" else num_steps
