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
from huginn_db.objectives.adaptive import ExitRule, run_adaptive
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
    self_condition: Literal["none", "latent", "prediction"] = "none"
    """A channel between loop iterations: the denoiser also reads the previous iteration's core
    output (latent) or its D (prediction), 0 on the first. Trained by self-conditioning: for a
    sequence picked with self_condition_prob a no-grad first pass supplies it."""
    self_condition_prob: float = 0.5
    """p: the share of training sequences whose self-conditioning input comes from a first pass."""
    self_condition_sigma: Literal["next", "same"] = "next"
    """The first pass's σ: the band edge above the sequence's band, where inference evaluated the
    iteration before (the top band then gets none, as inference's first step), or the same σ."""
    unroll: int = 1
    """k: a training step walks the num_bands-step Euler sampler from the drawn σ for k denoiser
    calls (denoiser at σ, Euler step to the band edge below, denoiser there, … as inference walks
    the edges), with gradient through all of them. A draw in band b has b + 1 denoiser
    evaluations left before σ_min, so it runs min(k, b + 1). 1: one denoiser pass."""
    unroll_loss: Literal["every", "last"] = "every"
    """With unroll > 1: the mean of the CE at every unrolled step (each denoiser call is
    supervised, as deep supervision), or the CE of a draw's last step only."""

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.num_bands < 1 or not self.p_std > 0 or not self.sigma_data > 0:
            raise ValueError("num_bands must be >= 1 and p_std, sigma_data > 0")
        for key, allowed in (
            ("sigma_per", ("sequence", "token")),
            ("loss_weighting", ("uniform", "edm")),
            ("sampler", ("euler", "heun")),
            ("self_condition", ("none", "latent", "prediction")),
            ("self_condition_sigma", ("next", "same")),
            ("unroll_loss", ("every", "last")),
        ):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be {'|'.join(allowed)}, got {getattr(self, key)!r}")
        if not 0 <= self.self_condition_prob <= 1:
            raise ValueError(f"self_condition_prob must be in [0, 1], got {self.self_condition_prob}")
        if self.self_condition != "none" and self.sigma_per != "sequence":
            raise ValueError("self_condition needs sigma_per=sequence (the first pass's σ follows the sequence's band)")
        if self.unroll < 1:
            raise ValueError(f"unroll must be >= 1, got {self.unroll}")
        if self.unroll > 1 and self.sigma_per != "sequence":
            raise ValueError("unroll > 1 needs sigma_per=sequence (the sampler walks a sequence down one σ schedule)")

    @property
    def self_condition_share(self) -> float:
        """Expected share of training sequences that get a first pass."""
        if self.self_condition == "none":
            return 0.0
        eligible = (self.num_bands - 1) / self.num_bands if self.self_condition_sigma == "next" else 1.0
        return self.self_condition_prob * eligible

    @property
    def unrolled_steps(self) -> float:
        """Expected denoiser calls with gradient per sequence: min(k, b + 1) over equally likely bands
        (exact in a micro-batch whose size is a multiple of num_bands: the bands are stratified)."""
        return sum(min(self.unroll, b + 1) for b in range(self.num_bands)) / self.num_bands

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
        self.edges = dm.band_edges(cfg.num_bands, self.sig).float()  # ascending, K + 1 σ

    @property
    def default_num_steps(self) -> int:
        return self.cfg.num_bands

    def loss(self, model, batch, step: int, slot: int = 0):
        ids, tgt = batch["input_ids"], batch["target_ids"]
        B, T = ids.shape
        # σ and ε on the training device (a CPU draw of ε is as long as a GPU step); on a CPU
        # device this is the one CPU generator, so the numbers are the same everywhere
        g = torch.Generator(device=ids.device).manual_seed(seed_of(self.seed, slot, 2))
        n = B if self.cfg.sigma_per == "sequence" else B * T
        # rotate the band offset with the slot so small batches still visit every band
        sigma, band = dm.sample_sigma(n, self.sig, self.cfg.num_bands, g, offset=slot * n)
        sigma = sigma.view(B, -1)  # (B, 1) or (B, T)
        # z = y + σ·ε with y the unit-norm embedding of the next token (built inside forward)
        eps = torch.randn(B, T, unwrap(model).cfg.hidden, generator=g, device=ids.device)
        w = batch["loss_weight"]
        sc, extra = self._self_condition(B, sigma, band, g, ids.device, slot)
        if self.cfg.unroll > 1:
            sc["unroll"], steps = self._unroll(sigma, band)
            # "r": core passes per sequence, the unrolled ones plus the first passes' share
            extra.update(r=steps + extra.get("r", 1.0) - 1.0, unroll_steps=steps)
        ce = model(ids, target_ids=tgt, sigma=sigma, noise=eps, c_in=dm.c_in(sigma, self.sig), labels=tgt, **sc) * w
        if self.cfg.loss_weighting == "edm":
            lam = dm.edm_weight(sigma, self.sig)
            ce = ce * (lam / lam.mean())
        loss = ce.sum() / w.sum().clamp(min=1)
        ls = sigma.detach().log()
        # tensors: the trainer reads them on the host only when it logs
        return loss, {
            "sigma_mean": sigma.detach().mean(),
            "log_sigma_mean": ls.mean(),
            "log_sigma_std": ls.std() if ls.numel() > 1 else 0.0,
            "bands": torch.bincount(band, minlength=self.cfg.num_bands),
            **extra,
        }

    def _unroll(self, sigma, band) -> tuple[dict, float]:
        """The unrolled pass's schedule (db_passes.unrolled_denoise kwargs) and its mean steps per row.

        A row in band b evaluates the denoiser at its σ, then at the edges σ_b, σ_{b−1}, …, σ_1
        as the num_bands-step sampler does (its last Euler step lands on σ_min, where inference
        evaluates nothing): min(k, b + 1) steps. Fixed by the bands, so known on the host."""
        k = self.cfg.unroll
        steps = (band + 1).clamp(max=k)
        edge = (band[:, None] + 1 - torch.arange(k)).clamp(min=0)  # step j ≥ 1 at edge b + 1 − j
        sigmas = torch.cat([sigma, self.edges[edge[:, 1:]].to(sigma.device)], dim=1)
        kw = {"sigmas": sigmas, "c_ins": dm.c_in(sigmas, self.sig), "steps": steps, "mode": self.cfg.unroll_loss}
        return kw, float(steps.double().mean())

    def _self_condition(self, B: int, sigma, band, g, device, slot: int) -> tuple[dict, dict]:
        """Which sequences get a no-grad first pass, and at which σ (model kwargs, stats).
        Drawn after ε from the same generator on a CPU device, so plain DB's draws are unchanged;
        on another device from a CPU generator of the same seed, so the row count is known on
        the host without a device sync (it sizes the first pass and the FLOP count)."""
        cfg = self.cfg
        if cfg.self_condition == "none":
            return {}, {}
        host = g if g.device.type == "cpu" else torch.Generator().manual_seed(seed_of(self.seed, slot, 2))
        pick = torch.rand(B, generator=host) < cfg.self_condition_prob
        if cfg.self_condition_sigma == "same":
            prev_sigma = sigma
        else:  # inference evaluated band b at edge b+1, after edge b+2; the top band comes first
            K = cfg.num_bands
            pick &= band < K - 1
            prev_sigma = self.edges[(band + 2).clamp(max=K)].view(B, 1).to(device)
        rows = pick.nonzero().flatten()
        kw = {
            "self_condition": cfg.self_condition,
            "prev_rows": rows.to(device),
            "prev_sigma": prev_sigma,
            "prev_c_in": dm.c_in(prev_sigma, self.sig),
        }
        # "r": core passes per sequence this step (1 + the first passes' share), for the FLOP count
        return kw, {"r": 1.0 + len(rows) / B, "self_cond_rows": len(rows)}

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
        exit=None,
        stats: dict | None = None,
    ):
        """K-step sampler from σ_max to σ_min; one loop iteration per equi-probability band.

        Returns the logits of the last denoiser evaluation. K=1 is the context-only prediction
        (a single pass at σ_max). noise: ε (default: drawn from `generator`); cache: see decoding.
        Every position runs the same σ schedule and attention is causal, so a position's z
        trajectory depends on earlier positions only: with a cache the new positions' trajectories
        equal those of an uncached pass over the whole sequence given the same ε. exit: an
        adaptive-exit rule (objectives.adaptive): a position stops its ODE at the step where it
        settles and keeps that step's logits (Euler sampler; K is then the maximum).
        """
        m = unwrap(model)
        sampler = sampler or self.cfg.sampler
        K = num_steps or self.default_num_steps
        rule = ExitRule.parse(exit)
        if rule is not None:
            if sampler != "euler" or return_trajectory:
                raise ValueError("adaptive exit runs the euler sampler and returns the final logits only")
            cache = cache if cache is not None else KVCache()
        e = m.encode(input_ids, cache)
        B, T = input_ids.shape
        E_hat = m.clean_embeddings()
        sched = dm.inference_schedule(K, self.sig)
        eps = self.noise(m, B, T, generator) if noise is None else noise
        z = sched[0] * eps.to(e.device)
        last = {"prev": None}
        mode = self.cfg.self_condition

        def denoise(zz, s):
            sigma = torch.full((B, 1), s, device=e.device)
            c = dm.c_in(sigma, self.sig)
            if mode == "none":
                last["logits"] = m.denoise(e, zz, sigma, c, cache)
            else:  # the previous evaluation's output is this one's self-conditioning input
                last["logits"], h = m.denoise(e, zz, sigma, c, cache, prev=last["prev"], return_latent=True)
            D = torch.softmax(last["logits"].float(), -1) @ E_hat  # D = E_p[Ê]
            if mode != "none":
                last["prev"] = h.float() if mode == "latent" else D
            return D

        if rule is not None:
            at = [0, z]

            def step(active):
                k, zz = at
                D = denoise(zz, sched[k])
                new = dm.euler_step(zz, D, sched[k], sched[k + 1])
                at[:] = [k + 1, new if active is None else torch.where(active[..., None], new, zz)]
                return last["logits"], D

            return run_adaptive(step, K, rule, cache, stats=stats)
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

    @classmethod
    def model_options(cls, cfg: DiffusionBlocksConfig) -> dict:
        return {"sigma_conditioning": True, "self_condition": cfg.self_condition != "none"}

    @staticmethod
    def core_iterations(cfg: DiffusionBlocksConfig, r: float | None = None) -> tuple[float, float]:
        """The grad passes (1, or the unrolled steps); the self-conditioning first passes (no
        grad) on a share of the rows. r = both per sequence; with both variable the split takes
        the expected unrolled steps, exact when the batch is a multiple of num_bands."""
        if r is None:
            return cfg.unrolled_steps, cfg.self_condition_share
        if cfg.self_condition == "none":
            return r, 0.0
        return cfg.unrolled_steps, max(r - cfg.unrolled_steps, 0.0)

    @classmethod
    def grad_decodes(cls, cfg: DiffusionBlocksConfig, r: float | None = None) -> float:
        return cls.core_iterations(cfg, r)[0]  # every unrolled step decodes, with gradient

    @classmethod
    def nograd_decodes(cls, cfg: DiffusionBlocksConfig, r: float | None = None) -> float:
        return cls.core_iterations(cfg, r)[1] if cfg.self_condition == "prediction" else 0.0

    @staticmethod
    def saved_core_iterations(cfg) -> int:
        return cfg.unroll  # an upper bound: a row runs min(unroll, b + 1)

    @staticmethod
    def sigma_evaluations(cfg: DiffusionBlocksConfig, batch: int, seq: int) -> int:
        return batch * seq if cfg.sigma_per == "token" else batch

    @staticmethod
    def decode_evaluations(cfg: DiffusionBlocksConfig, num_steps: int, sampler: str | None = None) -> int:
        return 2 * num_steps - 1 if (sampler or cfg.sampler) == "heun" else num_steps
