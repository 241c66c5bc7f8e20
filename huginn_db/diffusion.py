"""σ-math for DiffusionBlocks (EDM, variance-exploding conventions).

Everything here is a pure function of tensors and a `SigmaConfig`, so the numbers can be
pinned in tests (SPEC §3): z_σ = y + σ·ε, log σ ~ N(P_mean, P_std²) truncated to
[σ_min, σ_max], equi-probability bands, EDM preconditioning/weights, Euler and Heun steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_SQRT2 = math.sqrt(2.0)


@dataclass
class SigmaConfig:
    """Noise-level distribution and preconditioning constants.

    The paper's image defaults are P_mean=-1.2, P_std=1.2. For next-token targets those put
    most mass where z still identifies the token (the model learns to copy), so recipes set
    their own; see docs/objectives.md, "Choosing the σ distribution".
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2


def _phi(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / _SQRT2))


def _phi_inv(q: torch.Tensor) -> torch.Tensor:
    return _SQRT2 * torch.erfinv(2.0 * q - 1.0)


def _q_range(cfg: SigmaConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """CDF of the (untruncated) log-normal at σ_min and σ_max."""
    lo = torch.tensor((math.log(cfg.sigma_min) - cfg.p_mean) / cfg.p_std, dtype=torch.float64)
    hi = torch.tensor((math.log(cfg.sigma_max) - cfg.p_mean) / cfg.p_std, dtype=torch.float64)
    return _phi(lo), _phi(hi)


def sigma_from_quantile(q: torch.Tensor, cfg: SigmaConfig) -> torch.Tensor:
    """σ = exp(P_mean + P_std·Φ⁻¹(q)); q is a CDF value of the untruncated distribution."""
    q = q.double().clamp(1e-12, 1 - 1e-12)
    return torch.exp(cfg.p_mean + cfg.p_std * _phi_inv(q))


def band_edges(num_bands: int, cfg: SigmaConfig) -> torch.Tensor:
    """Equi-probability band edges σ_0 = σ_min < … < σ_B = σ_max (float64, ascending).

    q_b = q_min + (b/B)(q_max − q_min): every band holds 1/B of the truncated mass, so bands
    are narrow where the distribution is dense and wide in the tails.
    """
    if num_bands < 1:
        raise ValueError(f"num_bands must be >= 1, got {num_bands}")
    q_min, q_max = _q_range(cfg)
    b = torch.arange(num_bands + 1, dtype=torch.float64)
    edges = sigma_from_quantile(q_min + b / num_bands * (q_max - q_min), cfg)
    edges[0], edges[-1] = cfg.sigma_min, cfg.sigma_max  # exact ends despite float round-off
    return edges


def band_mass(lo: float, hi: float, cfg: SigmaConfig) -> float:
    """Probability of σ ∈ [lo, hi] under the truncated log-normal."""
    q_min, q_max = _q_range(cfg)
    f = lambda s: _phi(torch.tensor((math.log(s) - cfg.p_mean) / cfg.p_std, dtype=torch.float64))
    return float((f(hi) - f(lo)) / (q_max - q_min))


def sample_sigma(
    n: int,
    cfg: SigmaConfig,
    num_bands: int = 1,
    generator: torch.Generator | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw n σ from the truncated log-normal, stratified over `num_bands` equi-probability bands.

    Sample i falls in band (i + offset) mod B, uniformly in that band's quantile range, so a
    batch covers all bands evenly and each band keeps the right conditional distribution.
    Returns (σ float32 of shape (n,) on the generator's device, band index long of shape (n,)
    on the CPU: the bands are fixed by the offset, so reading them costs no device sync).
    """
    q_min, q_max = _q_range(cfg)
    band = (torch.arange(n) + offset) % num_bands
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device if generator else None)
    q = q_min + (band.to(u.device).double() + u) / num_bands * (q_max - q_min)
    sigma = sigma_from_quantile(q, cfg).clamp(cfg.sigma_min, cfg.sigma_max)
    return sigma.float(), band


# --- EDM preconditioning and loss weight -------------------------------------------------


def c_in(sigma: torch.Tensor, cfg: SigmaConfig) -> torch.Tensor:
    return 1.0 / torch.sqrt(sigma**2 + cfg.sigma_data**2)


def c_noise(sigma: torch.Tensor) -> torch.Tensor:
    return 0.25 * torch.log(sigma)


def c_skip(sigma: torch.Tensor, cfg: SigmaConfig) -> torch.Tensor:
    return cfg.sigma_data**2 / (sigma**2 + cfg.sigma_data**2)


def c_out(sigma: torch.Tensor, cfg: SigmaConfig) -> torch.Tensor:
    return sigma * cfg.sigma_data / torch.sqrt(sigma**2 + cfg.sigma_data**2)


def edm_weight(sigma: torch.Tensor, cfg: SigmaConfig) -> torch.Tensor:
    """λ(σ) = (σ² + σ_data²)/(σ·σ_data)², the EDM weight for the L2 denoising loss."""
    return (sigma**2 + cfg.sigma_data**2) / (sigma * cfg.sigma_data) ** 2


# --- Probability-flow ODE solvers (σ decreasing) -----------------------------------------


def euler_step(z: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """z_next = z + (σ_next − σ)·(z − D)/σ: move Δσ/σ of the way toward D (Δσ = σ − σ_next > 0)."""
    return z + (sigma_next - sigma) * (z - denoised) / sigma


def heun_step(z: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float, denoise_next) -> torch.Tensor:
    """Second-order Heun step: Euler predictor, then average the slopes at σ and σ_next.

    `denoise_next(z_pred, σ_next)` evaluates the denoiser at the predicted point.
    """
    z_pred = euler_step(z, denoised, sigma, sigma_next)
    d_next = denoise_next(z_pred, sigma_next)
    slope = 0.5 * ((z - denoised) / sigma + (z_pred - d_next) / sigma_next)
    return z + (sigma_next - sigma) * slope


def inference_schedule(num_steps: int, cfg: SigmaConfig) -> list[float]:
    """σ levels visited by a K-step sampler: the K-band edges from σ_max down to σ_min.

    Loop iteration k evaluates the denoiser at schedule[k] and steps to schedule[k+1], so
    iteration k covers band K−1−k: one loop iteration per equi-probability band.
    """
    return band_edges(num_steps, cfg).flip(0).tolist()
