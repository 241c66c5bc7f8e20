"""DiffusionBlocks' unrolled training (objective.diffusion_blocks.unroll): k Euler steps of the
inference sampler from the drawn σ, with gradient through the chain."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from huginn_db import diffusion as dm
from huginn_db.model import ModelConfig, RecurrentDepthLM
from huginn_db.objectives.diffusion_blocks import DiffusionBlocksConfig, DiffusionBlocksObjective
from tests.conftest import TINY_MODEL
from tests.test_objectives import CoreCounter, _batch


def _model(self_condition=False, seed=0):
    torch.manual_seed(seed)
    model = RecurrentDepthLM(ModelConfig(**TINY_MODEL, sigma_conditioning=True, self_condition=self_condition))
    for n, p in model.named_parameters():  # away from the zero init, so σ and the channel matter
        if ".ada." in n or "self_cond" in n:
            torch.nn.init.normal_(p, std=0.05)
    return model


def test_unroll_is_checked():
    with pytest.raises(ValueError, match="unroll must be >= 1, got 0"):
        DiffusionBlocksConfig(unroll=0)
    with pytest.raises(ValueError, match="unroll > 1 needs sigma_per=sequence"):
        DiffusionBlocksConfig(unroll=2, sigma_per="token")
    with pytest.raises(ValueError, match="unroll_loss must be every|last"):
        DiffusionBlocksConfig(unroll_loss="first")


def test_schedule_walks_the_band_edges_down_and_clips_at_sigma_min():
    obj = DiffusionBlocksObjective(DiffusionBlocksConfig(num_bands=4, unroll=3))
    sigma, band = dm.sample_sigma(8, obj.sig, 4, torch.Generator().manual_seed(0))
    kw, mean = obj._unroll(sigma.view(8, 1), band)
    assert kw["steps"].tolist() == [1, 2, 3, 3] * 2 and mean == 2.25  # band b has b + 1 evaluations left
    assert torch.equal(kw["sigmas"][:, 0], sigma)
    for b, row in zip(band.tolist(), kw["sigmas"]):
        for j in range(1, min(3, b + 1)):  # step j at edge b + 1 − j, as the K-step sampler visits them
            assert row[j].item() == pytest.approx(dm.inference_schedule(4, obj.sig)[4 - (b + 1 - j)], rel=1e-6)
    assert DiffusionBlocksConfig(num_bands=4, unroll=3).unrolled_steps == 2.25
    assert DiffusionBlocksConfig(num_bands=4).unrolled_steps == 1.0


@pytest.mark.parametrize("mode", ["none", "latent", "prediction"])
def test_unrolled_chain_is_the_inference_sampler(mode):
    """Started at σ_max from z = σ_max·ε, the j-th unrolled step's CE is the CE of inference's
    j-th denoiser evaluation (same ε, same Euler steps, same self-conditioning channel)."""
    cfg = DiffusionBlocksConfig(num_bands=4, unroll=3, unroll_loss="last", self_condition=mode)
    model, obj = _model(mode != "none").eval(), DiffusionBlocksObjective(cfg)
    b = _batch(B=2, T=8)
    ids, tgt = b["input_ids"], b["target_ids"]
    eps = obj.noise(model, 2, 8, torch.Generator().manual_seed(3))
    traj = obj.logits(model, ids, 4, noise=eps, return_trajectory=True)
    sched = dm.inference_schedule(4, obj.sig)
    sigma = torch.full((2, 1), sched[0])
    noise = eps - model.clean_embeddings()[tgt] / sched[0]  # z = y + σ·noise = σ_max·ε
    sigmas = torch.tensor([sched[:3]] * 2, dtype=torch.float32)
    with torch.no_grad():
        for j in (1, 2, 3):
            unroll = {"sigmas": sigmas, "c_ins": dm.c_in(sigmas, obj.sig), "steps": torch.full((2,), j), "mode": "last"}
            ce = model(ids, target_ids=tgt, sigma=sigma, noise=noise, c_in=dm.c_in(sigma, obj.sig), labels=tgt,
                       self_condition=mode, unroll=unroll)  # fmt: skip
            want = F.cross_entropy(traj[j - 1].float().transpose(1, 2), tgt, reduction="none")
            assert torch.allclose(ce, want, atol=1e-4), (j, (ce - want).abs().max())
    assert not torch.allclose(traj[0], traj[2])  # the steps differ: the comparison means something


@pytest.mark.parametrize("mode", ["none", "latent"])
def test_unroll_3_is_three_grad_core_calls_plus_the_first_pass(mode):
    cfg = DiffusionBlocksConfig(num_bands=4, unroll=3, self_condition=mode, self_condition_prob=1.0)
    model, obj = _model(mode != "none"), DiffusionBlocksObjective(cfg)
    c = CoreCounter(model)
    loss, stats = obj.loss(model, _batch(B=8), step=0)
    first = 1 if mode != "none" else 0  # self-conditioning's no-grad first pass, before the chain
    assert c.n == 3 + first and c.grad == [False] * first + [True] * 3
    rows = stats.get("self_cond_rows", 0)
    assert stats["unroll_steps"] == 2.25 and stats["r"] == 2.25 + rows / 8
    assert DiffusionBlocksObjective.core_iterations(cfg, stats["r"]) == (2.25, rows / 8)
    loss.backward()
    assert model.prelude[0].attn.qkv.weight.grad.abs().sum() > 0


def test_gradient_reaches_the_first_call_through_the_chain():
    """unroll_loss=last: a row that runs 3 steps has no loss at its first call, so the gradient
    its first core output receives came back through the Euler steps."""
    cfg = DiffusionBlocksConfig(num_bands=4, unroll=3, unroll_loss="last")
    model, obj = _model(), DiffusionBlocksObjective(cfg)
    outs = []
    model.core.register_forward_hook(lambda m, a, out: outs.append(out))
    grads = {}
    loss, _ = obj.loss(model, _batch(B=4), step=0)
    outs[0].register_hook(lambda g: grads.setdefault("first", g))
    loss.backward()
    steps = (torch.arange(4) + 1).clamp(max=3)  # bands 0..3 at slot 0
    per_row = grads["first"].abs().flatten(1).sum(1)
    assert bool((per_row[steps == 3] > 0).all()) and bool((per_row > 0).all())
    # every: the same rows also get their first call's own CE; the gradients differ
    every, _ = DiffusionBlocksObjective(dataclasses.replace(cfg, unroll_loss="every")).loss(_model(), _batch(B=4), 0)
    assert every.item() != pytest.approx(loss.item())


def test_unrolled_step_is_deterministic_for_a_seed():
    cfg = DiffusionBlocksConfig(num_bands=4, unroll=3, self_condition="prediction")
    runs = []
    for _ in range(2):
        model = _model(True, seed=5)
        loss, _ = DiffusionBlocksObjective(cfg, seed=9).loss(model, _batch(B=8), step=2, slot=3)
        loss.backward()
        runs.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_unroll_1_is_the_one_pass_step():
    """The default makes no unrolled call: the model receives exactly today's arguments."""
    model, seen = _model(), {}
    forward = model.train_pass
    model.train_pass = lambda *a, **kw: seen.update(kw) or forward(*a, **kw)
    DiffusionBlocksObjective(DiffusionBlocksConfig(num_bands=4)).loss(model, _batch(B=4), step=0)
    assert "unroll" not in seen


def test_zero3_refuses_a_micro_batch_without_every_band(tmp_path):
    """ZeRO-3 gathers the core's weights per call; a micro-batch short of num_bands could make
    ranks unroll different numbers of calls, and the collectives would never meet."""
    from huginn_db.config import load_config
    from huginn_db.errors import ConfigError
    from tests.conftest import RECIPES

    over = ["objective.diffusion_blocks.unroll=3", "deepspeed=deepspeed/zero3-cpu.json"]
    with pytest.raises(ConfigError, match=r"needs train.micro_batch_size >= num_bands \(4 < 8\)"):
        load_config(RECIPES / "demo-db.yaml", [*over, "train.micro_batch_size=4"])
    assert (
        load_config(RECIPES / "demo-db.yaml", [*over, "train.micro_batch_size=8"]).objective.diffusion_blocks.unroll
        == 3
    )
    assert load_config(RECIPES / "demo-db.yaml", ["objective.diffusion_blocks.unroll=3", "train.micro_batch_size=4"])
