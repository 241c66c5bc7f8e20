"""KV cache for greedy decoding: same tokens and logits as recomputing the whole sequence with
the same per-position random draws, at a fraction of the core work."""

import pytest
import torch

from huginn_db.model import KVCache, ModelConfig, RecurrentDepthLM
from huginn_db.objectives import generate, next_tokens
from huginn_db.objectives.bptt import BPTTConfig, BPTTObjective
from huginn_db.objectives.diffusion_blocks import DiffusionBlocksConfig, DiffusionBlocksObjective
from tests.conftest import TINY_MODEL

TINY = {**TINY_MODEL, "context": 32}


def _bptt():
    return BPTTObjective(BPTTConfig(mean_recurrence=3, backprop_depth=2)), RecurrentDepthLM(ModelConfig(**TINY)).eval()


def _db(sampler="euler"):
    model = RecurrentDepthLM(ModelConfig(**TINY, sigma_conditioning=True)).eval()
    for n, p in model.named_parameters():
        if ".ada." in n:  # a trained-looking denoiser: σ actually changes the computation
            torch.nn.init.normal_(p, std=0.1)
    return DiffusionBlocksObjective(DiffusionBlocksConfig(num_bands=4, sampler=sampler)), model


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


OBJECTIVES = {"bptt": _bptt, "db-euler": _db, "db-heun": lambda: _db("heun")}


def _prompt(B=3, T=6):
    return torch.randint(3, 50, (B, T), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", OBJECTIVES)
def test_cached_logits_match_an_uncached_pass_with_the_same_noise(kind):
    obj, model = OBJECTIVES[kind]()
    g = torch.Generator().manual_seed(0)
    ids = _prompt()
    noise = obj.noise(model, 3, ids.shape[1], g)
    cache = KVCache()
    logits = obj.logits(model, ids, 3, noise=noise, cache=cache)
    assert torch.allclose(logits, obj.logits(model, ids, 3, noise=noise), atol=1e-5)
    for _ in range(4):  # one new position per step, fresh noise for it only
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        step_noise = obj.noise(model, 3, 1, g)
        ids, noise = torch.cat([ids, nxt], 1), torch.cat([noise, step_noise], 1)
        logits = obj.logits(model, nxt, 3, noise=step_noise, cache=cache)
        full = obj.logits(model, ids, 3, noise=noise)
        assert logits.shape == (3, 1, 50)
        assert torch.allclose(logits[:, -1], full[:, -1], atol=1e-4)
    assert cache.length == ids.shape[1]


@pytest.mark.parametrize("kind", OBJECTIVES)
def test_cached_generation_gives_the_uncached_tokens(kind):
    obj, model = OBJECTIVES[kind]()
    ids = _prompt()
    a = generate(obj, model, ids, max_new_tokens=10, eos_id=-1, num_steps=3, seed=5, use_cache=True)
    b = generate(obj, model, ids, max_new_tokens=10, eos_id=-1, num_steps=3, seed=5, use_cache=False)
    assert a.shape == (3, 10) and torch.equal(a, b)


def test_a_chunk_after_cached_positions_sees_them_causally():
    """Several new positions at once after a cached prefix (bottom-right aligned causal mask,
    RoPE at absolute positions) equal one pass over the whole sequence."""
    obj, model = _bptt()
    ids = _prompt(T=12)
    noise = obj.noise(model, 3, 12, torch.Generator().manual_seed(0))
    cache = KVCache()
    head = obj.logits(model, ids[:, :5], 4, noise=noise[:, :5], cache=cache)
    tail = obj.logits(model, ids[:, 5:], 4, noise=noise[:, 5:], cache=cache)
    assert torch.allclose(torch.cat([head, tail], 1), obj.logits(model, ids, 4, noise=noise), atol=1e-5)


@pytest.mark.parametrize("kind", ["bptt", "db-euler"])
def test_cache_cuts_core_work_from_quadratic_to_linear(kind):
    obj, model = OBJECTIVES[kind]()
    positions = []
    model.core.register_forward_hook(lambda mod, args, out: positions.append(args[0].shape[0] * args[0].shape[1]))
    B, T, N, r = 2, 4, 20, 3
    ids = _prompt(B, T)
    generate(obj, model, ids, max_new_tokens=N, eos_id=-1, num_steps=r, use_cache=True)
    cached, positions[:] = sum(positions), []
    generate(obj, model, ids, max_new_tokens=N, eos_id=-1, num_steps=r, use_cache=False)
    uncached = sum(positions)
    assert cached == B * r * (T + N - 1)  # the prompt once, then one position per step
    assert uncached == B * r * sum(T + i for i in range(N))
    assert uncached > 5 * cached


def test_per_row_seeds_make_a_row_independent_of_its_batch_mates():
    obj, model = _db()
    ids = _prompt()
    both = generate(obj, model, ids, 6, eos_id=-1, num_steps=3, seed=[11, 12, 13])
    alone = generate(obj, model, ids[1:2], 6, eos_id=-1, num_steps=3, seed=[12])
    assert torch.equal(both[1:2], alone)


@pytest.mark.parametrize("first,then", [(3, 4), (4, 3)])
def test_a_pass_at_another_depth_is_refused(first, then):
    obj, model = _bptt()
    cache = KVCache()
    obj.logits(model, _prompt(T=6), first, cache=cache)
    with pytest.raises(RuntimeError, match="same depth"):
        obj.logits(model, _prompt(T=1), then, cache=cache)
        obj.logits(model, _prompt(T=1), then, cache=cache)  # fewer calls show at the next pass


def test_next_tokens_runs_only_as_far_as_asked():
    obj, model = _bptt()
    calls = []
    model.core.register_forward_hook(lambda *a: calls.append(1))
    steps = next_tokens(obj, model, _prompt(), num_steps=3)
    first, second = next(steps), next(steps)
    assert first.shape == second.shape == (3,) and len(calls) == 2 * 3


def test_cached_length_counts_against_the_context():
    obj, model = _bptt()
    cache = KVCache()
    obj.logits(model, _prompt(T=30), 2, cache=cache)
    with pytest.raises(ValueError, match="context"):
        obj.logits(model, _prompt(T=3), 2, cache=cache)
