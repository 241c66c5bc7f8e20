"""DiffusionBlocks' training passes beyond the one denoiser call: self-conditioning's first
pass, and the unrolled pass: k Euler steps of the inference sampler, backpropagated.

A plain DB step trains the denoiser at one σ on z = y + σ·ε, a state inference never feeds it
below σ_max (inference feeds it its own previous Euler step). Unrolled, the step starts there and
then walks the sampler: D = softmax(logits)·Ê, z ← Euler(z, D, σ_i → σ_{i+1}), denoiser at
σ_{i+1}, … with gradient through the whole chain, so training sees the states inference makes
(the Denoising Recursion Models idea: backprop over K recursive denoising steps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from huginn_db import diffusion as dm


def self_condition_input(m, e, y, noise, sigma, c_in, mode: str) -> torch.Tensor:
    """Self-conditioning's no-grad first pass at `sigma` from z = y + σ·noise, itself without
    a self-conditioning input: its core output (mode latent) or D = softmax(logits)·Ê (prediction)."""
    with torch.no_grad():
        z = y + sigma[..., None] * noise
        cond = m.sigma_embed(0.25 * torch.log(sigma))
        h = m.core_step((c_in[..., None] * z).to(e.dtype), e, cond)
        if mode == "latent":
            return h.float()
        return torch.softmax(m.decode(h, cond).float(), -1) @ m.clean_embeddings()


def unrolled_denoise(
    m, e, z, labels, sigmas, c_ins, steps, mode: str = "every", prev=None, self_condition: str = "none"
) -> torch.Tensor:
    """Per-position CE (B, T), fp32, of a chain of denoiser calls with gradient.

    sigmas, c_ins: (B, k) each row's σ at each step and its preconditioner (the drawn σ, then
    the band edges below it). steps: (B,) host long, the steps each row runs (≤ k; a row stops
    where its schedule reaches σ_min); a step runs only the rows still going. mode: every (the
    mean of a row's per-step CE) or last (its last step's CE). prev: the first call's
    self-conditioning input; later calls get the previous call's core output or D, as at
    inference, detached as self-conditioning's channel is in training.

    The logits are materialised at every step (D needs them), so model.loss_chunk does not apply.
    """
    B, T = labels.shape
    E_hat = m.clean_embeddings().detach()  # Ê is the fixed space z lives in, as for the target y
    out = torch.zeros(B, T, dtype=torch.float32, device=e.device)
    dev_steps = steps.to(e.device)
    rows = torch.arange(B)  # host: the batch rows the current z holds
    idx = None  # those rows as a device index; None while every row is still going
    pick = lambda t: t if idx is None else t[idx]  # noqa: E731
    for i in range(int(steps.max())):
        sigma, c = pick(sigmas)[:, i : i + 1], pick(c_ins)[:, i : i + 1]
        logits, h = m.denoise(pick(e), z, sigma, c, prev=prev, return_latent=True)
        ce = F.cross_entropy(logits.float().transpose(1, 2), pick(labels), reduction="none")
        n = pick(dev_steps)[:, None]
        ce = ce / n if mode == "every" else ce * (n == i + 1)
        out = out + ce if idx is None else out.index_add(0, idx, ce)
        going = steps[rows] > i + 1
        if not going.any():
            break
        if not going.all():  # rows whose schedule ends here leave the chain
            keep = going.nonzero().flatten().to(e.device)
            logits, h, z, sigma = logits[keep], h[keep], z[keep], sigma[keep]
            rows = rows[going]
            idx = rows.to(e.device)
        D = torch.softmax(logits.float(), -1) @ E_hat
        z = dm.euler_step(z, D, sigma[..., None], pick(sigmas)[:, i + 1 : i + 2, None])
        if self_condition != "none":
            prev = (h.float() if self_condition == "latent" else D).detach()
    return out
