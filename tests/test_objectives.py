import dataclasses

import numpy as np
import pytest
import torch

from huginn_db.model import ModelConfig, RecurrentDepthLM
from huginn_db.objectives import generate
from huginn_db.objectives.bptt import BPTTConfig, BPTTObjective, sample_recurrence
from huginn_db.objectives.diffusion_blocks import DiffusionBlocksConfig, DiffusionBlocksObjective
from huginn_db.objectives.fixed_depth import FixedDepthConfig, FixedDepthObjective
from tests.conftest import TINY_MODEL

TINY = TINY_MODEL


def _batch(B=4, T=12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 50, (B, T + 1), generator=g)
    return {"input_ids": ids[:, :-1], "target_ids": ids[:, 1:], "loss_weight": torch.ones(B, T)}


class CoreCounter:
    def __init__(self, model):
        self.n = 0
        self.grad = []
        model.core.register_forward_hook(self._hook)

    def _hook(self, mod, args, out):
        self.n += 1
        self.grad.append(torch.is_grad_enabled())


def test_huginn_recurrence_sampler_statistics():
    cfg = BPTTConfig(mean_recurrence=32)
    r = np.array([sample_recurrence(step, cfg, seed=0) for step in range(100_000)])
    assert r.mean() == pytest.approx(33, abs=0.5)
    assert np.median(r) == pytest.approx(29, abs=1)
    assert r.min() >= 1 and r.max() > 80  # heavy right tail


def test_recurrence_is_the_same_on_every_rank_and_reproducible():
    cfg = BPTTConfig()
    model = RecurrentDepthLM(ModelConfig(**TINY))
    counts = []
    for rank in (0, 1):
        c = CoreCounter(model)
        BPTTObjective(cfg, seed=7).loss(model, _batch(), step=5, slot=rank)
        counts.append(c.n)
    assert counts[0] == counts[1] == sample_recurrence(5, cfg, seed=7)


@pytest.mark.parametrize("step", [0, 1, 2, 3])
def test_bptt_step_runs_r_core_calls_last_k_with_grad(step):
    cfg = BPTTConfig(mean_recurrence=6, backprop_depth=2)
    model = RecurrentDepthLM(ModelConfig(**TINY))
    c = CoreCounter(model)
    loss, stats = BPTTObjective(cfg).loss(model, _batch(), step)
    r = sample_recurrence(step, cfg)
    k = min(2, r)
    assert c.n == stats["r"] == r
    assert c.grad == [False] * (r - k) + [True] * k
    loss.backward()
    assert model.prelude[0].attn.qkv.weight.grad.abs().sum() > 0  # e is injected into grad iterations


def test_db_training_step_is_one_core_pass():
    model = RecurrentDepthLM(ModelConfig(**TINY, sigma_conditioning=True))
    c = CoreCounter(model)
    obj = DiffusionBlocksObjective(DiffusionBlocksConfig(num_bands=4))
    loss, stats = obj.loss(model, _batch(B=8), step=0)
    assert c.n == 1
    assert stats["bands"].tolist() == [2, 2, 2, 2]  # stratified: every band equally represented
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "ada" in n or "core" in n)


@pytest.mark.parametrize("depth,k", [(1, None), (5, None), (5, 2)])
def test_fixed_depth_step_runs_r_core_calls_last_k_with_grad(depth, k):
    """The controls: full BPTT at a fixed r (k = r) and the r = 1 model, at every step."""
    cfg = FixedDepthConfig(depth=depth, backprop_depth=k)
    model = RecurrentDepthLM(ModelConfig(**TINY))
    for step in (0, 7):
        c = CoreCounter(model)
        loss, stats = FixedDepthObjective(cfg).loss(model, _batch(), step)
        grad = depth if k is None else k
        assert c.n == stats["r"] == depth and c.grad == [False] * (depth - grad) + [True] * grad
    loss.backward()
    assert model.prelude[0].attn.qkv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="backprop_depth=6 must be in 1..depth=5"):
        FixedDepthConfig(depth=5, backprop_depth=6)


@pytest.mark.parametrize("mode", ["latent", "prediction"])
@pytest.mark.parametrize("where", ["next", "same"])
def test_db_self_conditioning_step_is_one_grad_pass_plus_a_no_grad_first_pass(mode, where):
    import huginn_db.diffusion as dm

    cfg = DiffusionBlocksConfig(num_bands=4, self_condition=mode, self_condition_sigma=where, self_condition_prob=0.75)
    model = RecurrentDepthLM(ModelConfig(**TINY, sigma_conditioning=True, self_condition=True))
    plain = RecurrentDepthLM(ModelConfig(**TINY, sigma_conditioning=True))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "self_cond" not in k})
    obj, calls = DiffusionBlocksObjective(cfg), {}
    for step in range(4):
        c = CoreCounter(model)
        loss, stats = obj.loss(model, _batch(B=8), step, slot=step)
        rows = stats["self_cond_rows"]
        calls[step] = rows
        assert c.n == (2 if rows else 1) and c.grad == [False] * (c.n - 1) + [True]
        assert stats["r"] == 1 + rows / 8
        # the projection starts at zero: the step's loss is plain DB's, same draws
        base, _ = DiffusionBlocksObjective(dataclasses.replace(cfg, self_condition="none")).loss(
            plain, _batch(B=8), step, slot=step
        )
        assert loss.item() == pytest.approx(base.item(), abs=1e-6)
    assert any(calls.values())
    if where == "next":  # the top band is inference's first step: it never gets a first pass
        sigma, band = dm.sample_sigma(8, cfg.sigma(), 4, torch.Generator().manual_seed(0))
        kw, _ = obj._self_condition(8, sigma.view(8, 1), band, torch.Generator().manual_seed(1), "cpu", 0)
        edges = dm.band_edges(4, cfg.sigma()).float()
        assert all(band[r] < 3 for r in kw["prev_rows"])
        assert torch.equal(kw["prev_sigma"].flatten()[band < 3], edges[band[band < 3] + 2])
    loss.backward()
    assert model.core.self_cond.weight.grad.abs().sum() > 0


def test_db_self_conditioning_feeds_each_inference_evaluation_the_previous_one():
    cfg = DiffusionBlocksConfig(num_bands=4, self_condition="latent")
    model = RecurrentDepthLM(ModelConfig(**TINY, sigma_conditioning=True, self_condition=True)).eval()
    obj, ids = DiffusionBlocksObjective(cfg), _batch()["input_ids"]
    seen = []
    model.core.self_cond.register_forward_hook(lambda m, a, out: seen.append(a[0].clone()))
    before = obj.logits(model, ids, 4, torch.Generator().manual_seed(0))
    assert len(seen) == 3  # evaluations 2..K; the first has no input
    torch.nn.init.normal_(model.core.self_cond.weight, std=0.5)
    after = obj.logits(model, ids, 4, torch.Generator().manual_seed(0))
    assert not torch.allclose(before, after)  # the channel carries something
    first = obj.logits(model, ids, 1, torch.Generator().manual_seed(0))
    model.core.self_cond.weight.data.zero_()
    assert torch.allclose(first, obj.logits(model, ids, 1, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="self_condition needs sigma_per=sequence"):
        DiffusionBlocksConfig(self_condition="latent", sigma_per="token")


def test_db_sigma_per_token():
    model = RecurrentDepthLM(ModelConfig(**TINY, sigma_conditioning=True))
    obj = DiffusionBlocksObjective(DiffusionBlocksConfig(num_bands=4, sigma_per="token", loss_weighting="edm"))
    loss, stats = obj.loss(model, _batch(B=2, T=8), step=0)
    assert sum(stats["bands"].tolist()) == 16 and torch.isfinite(loss)


@pytest.mark.parametrize("K", [1, 3, 8])
def test_db_inference_runs_K_iterations(K):
    model = RecurrentDepthLM(ModelConfig(**TINY, sigma_conditioning=True)).eval()
    obj = DiffusionBlocksObjective(DiffusionBlocksConfig(num_bands=4))
    c = CoreCounter(model)
    logits = obj.logits(model, _batch()["input_ids"], num_steps=K, generator=torch.Generator().manual_seed(0))
    assert c.n == K and logits.shape == (4, 12, 50)
    c.n = 0
    obj.logits(model, _batch()["input_ids"], num_steps=K, sampler="heun")
    assert c.n == 2 * K - 1  # Heun: two evaluations per step, Euler on the last


def test_db_inference_is_deterministic_for_a_seed():
    model = RecurrentDepthLM(ModelConfig(**TINY, sigma_conditioning=True)).eval()
    for n, p in model.named_parameters():
        if ".ada." in n:
            torch.nn.init.normal_(p, std=0.1)
    obj = DiffusionBlocksObjective(DiffusionBlocksConfig())
    ids = _batch()["input_ids"]
    a = obj.logits(model, ids, 4, generator=torch.Generator().manual_seed(0))
    b = obj.logits(model, ids, 4, generator=torch.Generator().manual_seed(0))
    c = obj.logits(model, ids, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_generate_stops_at_eos_and_pads_after():
    model = RecurrentDepthLM(ModelConfig(**TINY)).eval()
    obj = BPTTObjective(BPTTConfig(mean_recurrence=2, backprop_depth=1))
    ids = _batch()["input_ids"][:, :4]
    out = generate(obj, model, ids, max_new_tokens=5, eos_id=2, num_steps=2)
    assert out.shape[0] == 4 and out.shape[1] <= 5
    for row in out.tolist():
        if 2 in row:
            assert all(t == 2 for t in row[row.index(2) :])


def test_activation_checkpointing_gives_the_same_gradients_and_counts_the_recompute():
    from huginn_db.compute import train_flops
    from huginn_db.measure import measure_step_flops

    cfg = BPTTConfig(mean_recurrence=4, backprop_depth=2)
    grads, flops = [], []
    for ckpt in (False, True):
        torch.manual_seed(0)
        mc = ModelConfig(**TINY, checkpoint_core=ckpt)
        model = RecurrentDepthLM(mc)
        loss, stats = BPTTObjective(cfg).loss(model, _batch(), step=1)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad()
        flops.append(measure_step_flops(model, BPTTObjective(cfg), _batch(), 1))
        B, T = _batch()["input_ids"].shape
        assert flops[-1] == pytest.approx(
            train_flops(mc, cfg, B, T, r=stats["r"], checkpoint_core=ckpt)["total"], rel=0.02
        )
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])
    assert flops[1] > flops[0]  # the recompute is real and counted


@pytest.mark.parametrize("name", ["bptt", "diffusion_blocks"])
def test_chunked_cross_entropy_gives_the_same_loss_and_gradients_and_counts_the_head_recompute(name):
    from huginn_db.compute import train_flops
    from huginn_db.measure import measure_saved_activations, measure_step_flops

    cfg = BPTTConfig(mean_recurrence=4, backprop_depth=2) if name == "bptt" else DiffusionBlocksConfig(num_bands=4)
    make = BPTTObjective if name == "bptt" else DiffusionBlocksObjective
    B, T = _batch()["input_ids"].shape
    losses, grads, flops, saved = [], [], [], []
    for chunk in (0, 7):  # 7 does not divide B·T = 48: the last chunk is short
        torch.manual_seed(0)
        mc = ModelConfig(**TINY, loss_chunk=chunk, sigma_conditioning=name != "bptt")
        model = RecurrentDepthLM(mc)
        loss, stats = make(cfg).loss(model, _batch(), step=1)
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad()
        flops.append(measure_step_flops(model, make(cfg), _batch(), 1))
        assert flops[-1] == pytest.approx(train_flops(mc, cfg, B, T, r=stats.get("r"))["total"], rel=0.02)
        saved.append(measure_saved_activations(model, make(cfg), _batch(), 1))
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])
    head = 2 * B * T * TINY["hidden"] * TINY["vocab_size"]
    assert flops[1] - flops[0] == head  # exactly one more head forward, in the backward
    # the full path keeps the fp32 log-softmax (B·T·V) for the backward; the chunked one does not
    assert saved[0] - saved[1] >= B * T * TINY["vocab_size"] * 4


@pytest.mark.slow
def test_compiled_core_trains_like_the_eager_one_and_keeps_state_dict_keys():
    cfg = DiffusionBlocksConfig(num_bands=4)
    out = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = RecurrentDepthLM(ModelConfig(**TINY, sigma_conditioning=True))
        keys = list(model.state_dict())
        if compiled:
            model.compile_core()
        loss, _ = DiffusionBlocksObjective(cfg).loss(model, _batch(), step=1)
        loss.backward()
        out.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        assert list(model.state_dict()) == keys  # the compiled wrapper is not a submodule
    assert out[0][0] == pytest.approx(out[1][0], abs=1e-5)
    assert all(torch.allclose(out[0][1][n], out[1][1][n], atol=1e-5) for n in out[0][1])
