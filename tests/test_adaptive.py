"""Adaptive exit (per-position early stopping of the loop) and KV-cache slots shared across
iterations, for every recurrent objective."""

import pytest
import torch

from huginn_db.model import KVCache
from huginn_db.objectives import generate
from huginn_db.objectives.adaptive import ExitRule
from tests.test_kv_cache import _bptt, _db, _prompt

OBJECTIVES = {"bptt": _bptt, "db": _db}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def _noise(obj, model, ids):
    return obj.noise(model, ids.shape[0], ids.shape[1], torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", OBJECTIVES)
@pytest.mark.parametrize("rule", ["kl:0", "entropy:0", "latent:0", "argmax:99"])
@pytest.mark.parametrize("cached", [False, True])
def test_a_threshold_no_position_meets_runs_the_fixed_depth(kind, rule, cached):
    obj, model = OBJECTIVES[kind]()
    ids = _prompt()
    noise, stats = _noise(obj, model, ids), {}
    fixed = obj.logits(model, ids, 4, noise=noise)
    adaptive = obj.logits(model, ids, 4, noise=noise, exit=rule, stats=stats, cache=KVCache() if cached else None)
    assert torch.equal(adaptive, fixed)
    assert (stats["iterations"] == 4).all()


@pytest.mark.parametrize("kind", OBJECTIVES)
def test_a_threshold_every_position_meets_exits_at_its_first_chance(kind):
    obj, model = OBJECTIVES[kind]()
    ids = _prompt()
    noise = _noise(obj, model, ids)
    calls = []
    hook = model.core.register_forward_hook(lambda *a: calls.append(1))
    stats = {}
    out = obj.logits(model, ids, 6, noise=noise, exit="entropy:1e9", stats=stats)
    assert (stats["iterations"] == 1).all() and len(calls) == 1
    assert torch.equal(out, obj.logits(model, ids, 1, noise=noise))
    hook.remove()
    # KL compares successive iterations: its first chance is iteration 2
    obj.logits(model, ids, 6, noise=noise, exit="kl:1e9", stats=stats)
    assert (stats["iterations"] == 2).all()


@pytest.mark.parametrize("kind", OBJECTIVES)
def test_positions_exit_at_their_own_depth_and_cached_decoding_agrees(kind):
    """A rule that some positions meet early: depths differ per position, and generation with
    the cache (exited tokens' keys carried into later iterations' entries) gives the tokens of
    rerunning the whole sequence each step."""
    obj, model = OBJECTIVES[kind]()
    ids = _prompt(T=8)
    stats = {}
    obj.logits(model, ids, 8, noise=_noise(obj, model, ids), exit="argmax:2", stats=stats)
    used = stats["iterations"]
    assert used.min() < used.max() <= 8 and used.min() >= 3  # argmax:2 needs 3 iterations
    cached = generate(obj, model, ids, 6, -1, num_steps=8, seed=[1, 2, 3], exit="argmax:2")
    rerun = generate(obj, model, ids, 6, -1, num_steps=8, seed=[1, 2, 3], exit="argmax:2", use_cache=False)
    assert torch.equal(cached, rerun)


def test_exit_rules_parse_and_refuse_bad_specs():
    assert ExitRule.parse("kl:5e-4") == ExitRule("kl", 5e-4) and ExitRule.parse("none") is None
    assert str(ExitRule.parse("argmax:3")) == "argmax:3"
    for bad in ("kl", "kl:x", "median:1", "argmax:1.5", "entropy:-1"):
        with pytest.raises(ValueError, match="exit="):
            ExitRule.parse(bad)


@pytest.mark.parametrize("kind", OBJECTIVES)
def test_kv_slots_beyond_the_depth_equal_the_plain_cache_and_fewer_save_memory(kind):
    obj, model = OBJECTIVES[kind]()
    ids = _prompt(T=5)
    plain = generate(obj, model, ids, 6, -1, num_steps=4, seed=[1, 2, 3])
    assert torch.equal(generate(obj, model, ids, 6, -1, num_steps=4, seed=[1, 2, 3], kv_slots=4), plain)
    assert torch.equal(generate(obj, model, ids, 6, -1, num_steps=4, seed=[1, 2, 3], kv_slots=64), plain)
    shared = generate(obj, model, ids, 6, -1, num_steps=4, seed=[1, 2, 3], kv_slots=1)
    assert shared.shape == plain.shape
    # bytes per cached token: prelude + iterations kept × calls per iteration (+ coda)
    cfg, sizes = model.cfg, {}
    for slots in (None, 1):
        cache = KVCache(slots)
        obj.logits(model, ids, 4, noise=_noise(obj, model, ids), cache=cache)
        sizes[slots] = cache.nbytes() / (ids.numel())
    per_call = 2 * cfg.hidden * 4  # keys and values, fp32
    calls = {"bptt": (cfg.core_layers, cfg.coda_layers), "db": (cfg.core_layers + cfg.coda_layers, 0)}[kind]
    assert sizes[None] == per_call * (cfg.prelude_layers + 4 * calls[0] + calls[1])
    assert sizes[1] == per_call * (cfg.prelude_layers + calls[0] + calls[1])
    with pytest.raises(ValueError, match="kv_slots"):
        KVCache(0)


@pytest.mark.parametrize("kind", OBJECTIVES)
def test_a_tokenwise_prefill_decodes_what_a_parallel_one_does_and_lets_shared_slots_act_on_the_prompt(kind):
    obj, model = OBJECTIVES[kind]()
    ids = _prompt(T=5)
    plain = generate(obj, model, ids, 6, -1, num_steps=4, seed=[1, 2, 3])
    for slots in (None, 4):
        assert torch.equal(
            generate(obj, model, ids, 6, -1, num_steps=4, seed=[1, 2, 3], kv_slots=slots, prefill="tokenwise"), plain
        )
    # one slot: in a parallel prefill the positions still meet at every iteration, position by position they do not
    noise, last = _noise(obj, model, ids), {}
    for prefill in ("parallel", "tokenwise"):
        cache, spans = KVCache(1), [slice(0, 5)] if prefill == "parallel" else [slice(t, t + 1) for t in range(5)]
        for s in spans:
            last[prefill] = obj.logits(model, ids[:, s], 4, noise=noise[:, s], cache=cache)[:, -1]
    assert not torch.allclose(last["parallel"], last["tokenwise"], atol=1e-4)
    with pytest.raises(ValueError, match="prefill"):
        generate(obj, model, ids, 2, -1, num_steps=4, prefill="rowwise")


def test_lm_eval_takes_exit_and_kv_slots_and_reports_the_iterations_used(tmp_path):
    from huginn_db.lm_eval import HuginnLM, evaluate
    from huginn_db.tokenizer import CharTokenizer
    from tests.test_lm_eval import _export

    run = _export(tmp_path / "bptt", "bptt", CharTokenizer(), context=64)
    task = ["reasoning_cups_d2"]
    fixed = evaluate(run, task, [3], limit=4)[3]
    same = evaluate(run, task, [3], limit=4, model_args={"exit": "kl:0", "kv_slots": 64})[3]
    assert same["results"] == fixed["results"] and same["huginn_db"]["mean_iterations"] == 3
    first = evaluate(run, task, [3], limit=4, model_args={"exit": "entropy:1e9"})[3]
    assert {k: first["huginn_db"][k] for k in ("exit", "max_steps", "mean_iterations")} == {
        "exit": "entropy:1e+09",
        "max_steps": 3,
        "mean_iterations": 1.0,
    }
    assert "mean_iterations" not in fixed["huginn_db"]
    lm = HuginnLM(str(run), num_steps=4, exit="latent:1e9")
    lm._logprobs([[1, 5, 6, 7], [1, 8]])
    assert lm.pop_mean_iterations() == 1.0 and lm.pop_mean_iterations() is None
    with pytest.raises(ValueError, match="exit="):
        HuginnLM(str(run), exit="soon")


def test_lm_eval_kv_slots_score_through_the_shared_cache_and_report_decode_memory(tmp_path):
    from huginn_db.lm_eval import HuginnLM, evaluate
    from huginn_db.tokenizer import CharTokenizer
    from tests.test_lm_eval import _export

    run = _export(tmp_path / "bptt", "bptt", CharTokenizer(), context=64)
    rows = [[1, 5, 6, 7, 9, 4], [1, 8, 3]]
    plain = HuginnLM(str(run), num_steps=4)._logprobs(rows)
    wide = HuginnLM(str(run), num_steps=4, kv_slots=64)._logprobs(rows)
    assert torch.allclose(plain[0], wide[0], atol=1e-4) and torch.allclose(plain[1, :3], wide[1, :3], atol=1e-4)
    one = HuginnLM(str(run), num_steps=4, kv_slots=1)._logprobs(rows)
    assert torch.allclose(plain[:, 0], one[:, 0], atol=1e-4) and not torch.allclose(plain[0], one[0], atol=1e-3)
    per_token = {}
    for slots in (None, 1):
        res = evaluate(run, ["reasoning_cups_d2"], [4], limit=2, model_args={"kv_slots": slots})[4]
        per_token[slots] = res["huginn_db"]["kv_bytes_per_token"]
    cfg = HuginnLM(str(run)).model.cfg
    call = 2 * cfg.hidden * 4
    assert per_token[None] == call * (cfg.prelude_layers + 4 * cfg.core_layers + cfg.coda_layers)
    assert per_token[1] == call * (cfg.prelude_layers + cfg.core_layers + cfg.coda_layers)
