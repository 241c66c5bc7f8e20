"""Two ways to train the same looped model, behind one interface.

    objective.loss(model, batch, step, slot) -> (loss, stats)   one training micro-step
    objective.logits(model, ids, num_steps)  -> logits          inference at a chosen depth
    objective.noise(model, B, T, generator)  -> (B, T, h)       the per-position random draw
    generate(objective, model, ids, ...)     -> new token ids   greedy decoding (KV cache)

`bptt`              Huginn's truncated backprop through time (SPEC §2): r ~ Poisson-log-normal,
                    r − k iterations without grad, the last k with grad.
`diffusion_blocks`  every loop iteration is one Euler step of the probability-flow ODE over
                    one equi-probability σ-band (SPEC §3); training is one σ-conditioned
                    denoiser pass per step.

Both run the core r (BPTT) or K (DB) times per forward from a random start per position
(BPTT's initial state, DB's ε). Greedy decoding draws each position's start once, when the
position enters, and with a `KVCache` runs only the newest position per step: past positions
keep their cached keys/values at every iteration, i.e. their whole trajectory is reused.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from huginn_db import diffusion as dm
from huginn_db.model import KVCache


def _unwrap(model):
    return getattr(model, "module", model)  # a DeepSpeed engine wraps the nn.Module


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


# --- truncated BPTT ------------------------------------------------------------------------

@dataclass
class BPTTConfig:
    mean_recurrence: int = 32  # r̄
    backprop_depth: int = 8  # k
    recurrence_std: float = 0.5  # σ of the log-normal over τ
    eval_steps: int | None = None  # default test-time r (None: r̄)


def sample_recurrence(step: int, cfg: BPTTConfig, seed: int = 0) -> int:
    """r = Poisson(e^τ) + 1, τ ~ N(ln r̄ − s²/2, s): mean r̄ + 1, heavy right tail.

    Seeded by (seed, step) only, so every data-parallel rank draws the same r.
    """
    rng = np.random.default_rng([seed, step, 0x5EC])
    s = cfg.recurrence_std
    tau = rng.normal(math.log(cfg.mean_recurrence) - 0.5 * s * s, s)
    return int(rng.poisson(math.exp(tau))) + 1


class BPTTObjective:
    name = "bptt"
    sigma_conditioning = False

    def __init__(self, cfg: BPTTConfig, seed: int = 0):
        self.cfg, self.seed = cfg, seed

    @property
    def default_num_steps(self) -> int:
        return self.cfg.eval_steps or self.cfg.mean_recurrence

    def loss(self, model, batch, step: int, slot: int = 0):
        """`slot` is the global micro-batch index (step·grad_accum + micro)·world + rank."""
        r = sample_recurrence(step, self.cfg, self.seed)
        k = min(self.cfg.backprop_depth, r)
        # initial-state noise differs per micro-batch but is reproducible
        g = torch.Generator(device=batch["input_ids"].device).manual_seed(_seed(self.seed, slot, 1))
        # the model returns the per-position CE (chunked when model.loss_chunk is set)
        w = batch["loss_weight"]
        ce = model(batch["input_ids"], num_steps=r, num_grad_steps=k, generator=g, labels=batch["target_ids"]) * w
        loss = ce.sum() / w.sum().clamp(min=1)
        return loss, {"r": r, "no_grad_iters": r - k, "grad_iters": k}

    def noise(self, model, batch: int, length: int, generator=None) -> torch.Tensor:
        """Initial states s₀ for `length` positions (CPU, float32), as `recur` would draw them."""
        m = _unwrap(model)
        return m.initial_state(torch.empty(batch, length, m.cfg.hidden), generator)

    @torch.no_grad()
    def logits(self, model, input_ids, num_steps: int | None = None, generator=None,
               noise: torch.Tensor | None = None, cache: KVCache | None = None, **_):
        """noise: the initial state s₀ (default: drawn from `generator`); cache: see generate."""
        return _unwrap(model).recur(input_ids, num_steps or self.default_num_steps, 0, generator,
                                    state=noise, cache=cache)


# --- DiffusionBlocks -----------------------------------------------------------------------

@dataclass
class DiffusionBlocksConfig:
    # σ distribution; the equi-probability bands follow whatever is set here
    p_mean: float = 1.5
    p_std: float = 1.0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    num_bands: int = 8  # K: training strata and the default number of inference iterations
    sigma_per: str = "sequence"  # sequence | token
    loss_weighting: str = "uniform"  # uniform | edm (λ(σ) normalised to mean 1 in the batch)
    sampler: str = "euler"  # euler | heun

    def sigma(self) -> dm.SigmaConfig:
        return dm.SigmaConfig(self.sigma_min, self.sigma_max, self.sigma_data, self.p_mean, self.p_std)


class DiffusionBlocksObjective:
    name = "diffusion_blocks"
    sigma_conditioning = True

    def __init__(self, cfg: DiffusionBlocksConfig, seed: int = 0):
        if cfg.sigma_per not in ("sequence", "token"):
            raise ValueError(f"sigma_per must be sequence|token, got {cfg.sigma_per!r}")
        if cfg.loss_weighting not in ("uniform", "edm"):
            raise ValueError(f"loss_weighting must be uniform|edm, got {cfg.loss_weighting!r}")
        if cfg.sampler not in ("euler", "heun"):
            raise ValueError(f"sampler must be euler|heun, got {cfg.sampler!r}")
        self.cfg, self.seed, self.sig = cfg, seed, cfg.sigma()

    @property
    def default_num_steps(self) -> int:
        return self.cfg.num_bands

    def loss(self, model, batch, step: int, slot: int = 0):
        """`slot` is the global micro-batch index (step·grad_accum + micro)·world + rank."""
        ids, tgt = batch["input_ids"], batch["target_ids"]
        B, T = ids.shape
        g = torch.Generator().manual_seed(_seed(self.seed, slot, 2))
        n = B if self.cfg.sigma_per == "sequence" else B * T
        # rotate the band offset with the slot so small batches still visit every band
        sigma, band = dm.sample_sigma(n, self.sig, self.cfg.num_bands, g, offset=slot * n)
        sigma = sigma.view(B, -1).to(ids.device)  # (B, 1) or (B, T)
        # z = y + σ·ε with y the unit-norm embedding of the next token (built inside forward)
        eps = torch.randn(B, T, _unwrap(model).cfg.hidden, generator=g).to(ids.device)
        w = batch["loss_weight"]
        ce = model(ids, target_ids=tgt, sigma=sigma, noise=eps, c_in=dm.c_in(sigma, self.sig), labels=tgt) * w
        if self.cfg.loss_weighting == "edm":
            lam = dm.edm_weight(sigma, self.sig)
            ce = ce * (lam / lam.mean())
        loss = ce.sum() / w.sum().clamp(min=1)
        ls = sigma.log()
        return loss, {
            "sigma_mean": float(sigma.mean()), "log_sigma_mean": float(ls.mean()),
            "log_sigma_std": float(ls.std()) if ls.numel() > 1 else 0.0,
            "bands": torch.bincount(band, minlength=self.cfg.num_bands).tolist(),
        }

    def noise(self, model, batch: int, length: int, generator=None) -> torch.Tensor:
        """ε for `length` positions (CPU, float32): the sampler starts from z₀ = σ_max·ε."""
        return torch.randn(batch, length, _unwrap(model).cfg.hidden, generator=generator)

    @torch.no_grad()
    def logits(self, model, input_ids, num_steps: int | None = None, generator=None,
               sampler: str | None = None, return_trajectory: bool = False,
               noise: torch.Tensor | None = None, cache: KVCache | None = None):
        """K-step sampler from σ_max to σ_min; one loop iteration per equi-probability band.

        Returns the logits of the last denoiser evaluation. K=1 is the context-only prediction
        (a single pass at σ_max). noise: ε (default: drawn from `generator`); cache: see generate.
        Every position runs the same σ schedule and attention is causal, so a position's z
        trajectory depends on earlier positions only: with a cache the new positions' trajectories
        equal those of an uncached pass over the whole sequence given the same ε.
        """
        m = _unwrap(model)
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


# --- shared ---------------------------------------------------------------------------------

def greedy_tokens(objective, model, prompt_ids: torch.Tensor, num_steps: int | None = None,
                  seed: int | Sequence[int] = 0, use_cache: bool = True, **kw) -> Iterator[torch.Tensor]:
    """Yields the greedy next token of every row (B,), step after step; the caller stops.

    Each position's random start (objective.noise) is drawn once, in order, when the position
    enters: from one generator for the batch (int seed) or one per row (a seed per row, so a
    row's draws do not depend on its batch-mates). With the cache a step runs the newest
    position only; without it a step reruns the whole sequence with the same draws — the same
    tokens and logits (up to float rounding) at O(length) times the core work.
    """
    m = _unwrap(model)
    B = prompt_ids.shape[0]
    gens = [torch.Generator().manual_seed(int(s)) for s in (seed if isinstance(seed, Sequence) else [seed])]

    def draw(length: int) -> torch.Tensor:
        if len(gens) == 1:
            return objective.noise(m, B, length, gens[0])
        return torch.cat([objective.noise(m, 1, length, g) for g in gens])

    cache = KVCache() if use_cache else None
    ids, noise = prompt_ids, draw(prompt_ids.shape[1])
    new_ids, new_noise = ids, noise
    while True:
        if cache is None:
            logits = objective.logits(model, ids, num_steps, noise=noise, **kw)
        else:
            logits = objective.logits(model, new_ids, num_steps, noise=new_noise, cache=cache, **kw)
        nxt = logits[:, -1].argmax(-1)
        yield nxt
        new_ids, new_noise = nxt[:, None], draw(1)
        if cache is None:
            ids, noise = torch.cat([ids, new_ids], dim=1), torch.cat([noise, new_noise], dim=1)


@torch.no_grad()
def generate(objective, model, prompt_ids: torch.Tensor, max_new_tokens: int, eos_id: int,
             num_steps: int | None = None, seed: int | Sequence[int] = 0, use_cache: bool = True,
             **kw) -> torch.Tensor:
    """Greedy decoding of a batch of equal-length prompts; stops once every row hit EOS.

    seed and use_cache as in greedy_tokens: cached and uncached decoding give the same tokens.
    """
    done = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    out = []
    steps = greedy_tokens(objective, model, prompt_ids, num_steps, seed, use_cache, **kw)
    for nxt in itertools.islice(steps, max_new_tokens):
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        out.append(nxt)
        done |= nxt == eos_id
        if bool(done.all()):
            break
    return torch.stack(out, dim=1) if out else prompt_ids[:, :0]


OBJECTIVES = {"bptt": (BPTTObjective, BPTTConfig), "diffusion_blocks": (DiffusionBlocksObjective, DiffusionBlocksConfig)}
