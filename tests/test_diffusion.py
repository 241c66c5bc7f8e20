import math

import pytest
import torch

from huginn_db import diffusion as dm

PAPER = dm.SigmaConfig()  # σ ∈ [0.002, 80], log σ ~ N(-1.2, 1.2)


@pytest.mark.parametrize(
    "B,expected",
    [
        (4, [0.002, 0.134, 0.301, 0.677, 80.0]),
        (3, [0.002, 0.180, 0.505, 80.0]),
    ],
)
def test_band_edges_match_paper(B, expected):
    edges = dm.band_edges(B, PAPER).tolist()
    assert len(edges) == B + 1
    for got, want in zip(edges, expected):
        assert got == pytest.approx(want, rel=0.01)


@pytest.mark.parametrize("cfg", [PAPER, dm.SigmaConfig(p_mean=1.5, p_std=1.0)])
@pytest.mark.parametrize("B", [1, 3, 4, 8])
def test_every_band_has_equal_mass(cfg, B):
    edges = dm.band_edges(B, cfg).tolist()
    masses = [dm.band_mass(lo, hi, cfg) for lo, hi in zip(edges[:-1], edges[1:])]
    assert masses == pytest.approx([1.0 / B] * B, abs=1e-9)
    assert all(b > a for a, b in zip(edges[:-1], edges[1:]))


def test_bands_follow_the_configured_distribution():
    shifted = dm.band_edges(4, dm.SigmaConfig(p_mean=1.5, p_std=1.0))
    assert shifted[2] == pytest.approx(math.exp(1.5), rel=0.02)  # median of the truncated law ≈ e^P_mean
    assert shifted[2] > 10 * dm.band_edges(4, PAPER)[2]


def test_stratified_sampling_covers_bands_and_matches_distribution():
    B = 4
    g = torch.Generator().manual_seed(0)
    sigma, band = dm.sample_sigma(40_000, PAPER, B, g)
    edges = dm.band_edges(B, PAPER)
    assert torch.bincount(band).tolist() == [10_000] * B
    lo, hi = edges[band].float(), edges[band + 1].float()
    assert bool(((sigma >= lo * 0.9999) & (sigma <= hi * 1.0001)).all())
    # the stratified mixture is still the truncated log-normal: median ≈ e^P_mean
    assert sigma.log().median().item() == pytest.approx(-1.2, abs=0.03)


def test_sampling_is_deterministic_for_a_seed():
    a = dm.sample_sigma(16, PAPER, 4, torch.Generator().manual_seed(3))[0]
    b = dm.sample_sigma(16, PAPER, 4, torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b)


def test_euler_step_moves_toward_denoiser_by_fraction_of_gap():
    z, D = torch.tensor([5.0]), torch.tensor([2.0])
    nxt = dm.euler_step(z, D, sigma=4.0, sigma_next=3.0)  # Δσ/σ = 1/4 of the gap 3.0
    assert nxt.item() == pytest.approx(5.0 - 0.75)
    # the step to σ=0 lands exactly on D; a zero step leaves z unchanged
    assert dm.euler_step(z, D, 4.0, 0.0).item() == pytest.approx(2.0)
    assert dm.euler_step(z, D, 4.0, 4.0).item() == pytest.approx(5.0)


def test_heun_is_exact_for_a_constant_denoiser():
    z, D = torch.tensor([1.0, -3.0]), torch.tensor([0.5, 0.5])
    # with D constant the ODE solution is z(σ') = D + (σ'/σ)(z − D); Euler is already exact
    want = D + (0.5 / 2.0) * (z - D)
    got = dm.heun_step(z, D, 2.0, 0.5, lambda zz, s: D)
    assert torch.allclose(got, want)


def test_preconditioning_values():
    s = torch.tensor([0.5])
    assert dm.c_in(s, PAPER).item() == pytest.approx(1 / math.sqrt(0.5))
    assert dm.c_skip(s, PAPER).item() == pytest.approx(0.5)
    assert dm.c_out(s, PAPER).item() == pytest.approx(0.25 / math.sqrt(0.5))
    assert dm.c_noise(torch.tensor([math.e])).item() == pytest.approx(0.25)
    assert dm.edm_weight(s, PAPER).item() == pytest.approx(0.5 / 0.0625)


def test_inference_schedule_descends_over_band_edges():
    sched = dm.inference_schedule(4, PAPER)
    assert sched[0] == 80.0 and sched[-1] == pytest.approx(0.002)
    assert sched == sorted(sched, reverse=True) and len(sched) == 5
