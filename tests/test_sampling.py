"""Sampled decoding: temperature / top-k / top-p as HF and lm-eval define them, seeded per row,
the same tokens with and without the KV cache, and lm-eval's generation_kwargs honoured."""

import pytest
import torch
from lm_eval.api.instance import Instance

from huginn_db.objectives import Sampling, generate
from tests.test_kv_cache import OBJECTIVES, _prompt


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def _gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_pick_limits_and_frequencies():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    gens = _gens(4000)

    def freq(**kw):
        picks = Sampling(do_sample=True, **kw).pick(logits, gens)
        return torch.bincount(picks, minlength=4).float() / len(picks)

    assert torch.allclose(freq(), torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    assert torch.allclose(freq(top_k=2), torch.tensor([0.625, 0.375, 0, 0]), atol=0.03)
    # nucleus: a token is dropped once the more likely ones reach top_p
    assert torch.equal(freq(top_p=0.5), torch.tensor([1.0, 0, 0, 0]))
    assert torch.allclose(freq(top_p=0.6), torch.tensor([0.625, 0.375, 0, 0]), atol=0.03)
    hot = freq(temperature=0.5)  # p_i ∝ p_i² sharpens
    assert torch.allclose(hot, torch.tensor([25, 9, 2.25, 0.25]) / 36.5, atol=0.03)
    assert torch.equal(freq(temperature=1e-4), torch.tensor([1.0, 0, 0, 0]))


def test_bad_sampling_settings_are_refused():
    for kw, msg in ((dict(temperature=-1), "temperature"), (dict(top_k=-2), "top_k"), (dict(top_p=0), "top_p")):
        with pytest.raises(ValueError, match=msg):
            Sampling(do_sample=True, **kw)
    s = Sampling.from_kwargs({"do_sample": "true", "temperature": "0.7", "top_k": None, "until": ["\n"]})
    assert s == Sampling(do_sample=True, temperature=0.7)
    assert Sampling.from_kwargs({"temperature": 0.9}).greedy  # as HF: no do_sample, no sampling


@pytest.mark.parametrize("kind", OBJECTIVES)
def test_sampled_decoding_limits_to_greedy_and_repeats_by_seed(kind):
    obj, model = OBJECTIVES[kind]()
    ids = _prompt()

    def run(sampling, seed=5, use_cache=True):
        return generate(obj, model, ids, 8, eos_id=-1, num_steps=3, seed=seed, use_cache=use_cache, sampling=sampling)

    greedy = run(None)
    assert torch.equal(run(Sampling(do_sample=True, temperature=1e-5)), greedy)
    assert torch.equal(run(Sampling(do_sample=True, top_k=1)), greedy)
    assert torch.equal(run(Sampling(do_sample=True, temperature=0)), greedy)
    hot = Sampling(do_sample=True, temperature=1.5)
    a = run(hot)
    assert torch.equal(a, run(hot))  # the same seed, the same samples
    assert not torch.equal(a, greedy) and not torch.equal(a, run(hot, seed=6))
    assert torch.equal(a, run(hot, use_cache=False))  # the cache changes nothing about a sample
    rows = generate(obj, model, ids[1:2], 8, eos_id=-1, num_steps=3, seed=[12], sampling=hot)
    both = generate(obj, model, ids, 8, eos_id=-1, num_steps=3, seed=[11, 12, 13], sampling=hot)
    assert torch.equal(both[1:2], rows)  # a row's samples do not depend on its batch-mates


def test_lm_eval_generation_kwargs_are_honoured(tmp_path):
    from huginn_db.data.reasoning import CharTokenizer
    from huginn_db.lm_eval import HuginnLM
    from tests.test_lm_eval import _export

    lm = HuginnLM(str(_export(tmp_path / "db", "diffusion_blocks", CharTokenizer(), context=24)), num_steps=3)

    def gen(*kwargs_list, prompt="12+3="):
        reqs = [Instance("generate_until", {}, (prompt, dict(max_gen_toks=10, **kw)), idx=0) for kw in kwargs_list]
        return lm.generate_until(reqs, disable_tqdm=True)

    (greedy,) = gen({})
    hot = dict(do_sample=True, temperature=2.0)
    assert gen(dict(do_sample=True, temperature=0.0)) == [greedy] == gen(dict(do_sample=True, top_k=1))
    first = gen(hot, hot, hot)
    assert first == gen(hot, hot, hot)  # reproducible per request
    assert len(set(first)) > 1  # repeats of one request are different samples
    assert gen(hot, {})[1] == greedy  # requests of other settings in one call keep theirs
    with pytest.raises(ValueError, match="generation_kwargs: top_p"):
        gen(dict(do_sample=True, top_p=2.0))
