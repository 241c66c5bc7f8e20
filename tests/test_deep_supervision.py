"""Deep supervision: slots that keep an example and its carried state for M steps."""

import pytest
import torch

from huginn_db.data.reasoning import ReasoningConfig, ReasoningCorpus
from huginn_db.errors import ConfigError
from huginn_db.model import ModelConfig, RecurrentDepthLM
from huginn_db.objectives.deep_supervision import DeepSupervisionConfig, DeepSupervisionObjective
from tests.conftest import TINY_MODEL
from tests.test_objectives import CoreCounter


def _corpus():
    return ReasoningCorpus(ReasoningConfig(family="cups", train_difficulties=[1, 2]), seed=0)


def _model():
    torch.manual_seed(0)
    return RecurrentDepthLM(ModelConfig(**{**TINY_MODEL, "vocab_size": _corpus().tokenizer.vocab_size}))


@pytest.mark.parametrize("n", [0, 3])
def test_step_runs_n_no_grad_and_one_grad_core_iterations(n):
    model, corpus = _model(), _corpus()
    obj = DeepSupervisionObjective(DeepSupervisionConfig(nograd_steps=n, segments=4))
    for step in range(3):
        c = CoreCounter(model)
        loss, stats = obj.loss(model, obj.train_batch(corpus, 8, step, 0, 0, 1, 1), step)
        assert c.n == stats["r"] == n + 1 and c.grad == [False] * n + [True]
        loss.backward()
    assert model.prelude[0].attn.qkv.weight.grad.abs().sum() > 0


def test_slots_keep_an_example_for_m_steps_staggered_and_read_every_sample_once():
    corpus, M, B = _corpus(), 4, 8
    obj = DeepSupervisionObjective(DeepSupervisionConfig(segments=M))
    seen = {}
    for step in range(12):
        for micro, rank in ((0, 0), (0, 1), (1, 0), (1, 1)):  # 2 ranks × 2 micro-batches
            batch = obj.train_batch(corpus, B, step, micro, rank, 2, 2)
            rows, example, age = batch["rows"], batch["example"], batch["age"]
            assert rows == list(range((micro * 2 + rank) * B, (micro * 2 + rank + 1) * B))
            assert age == [(step + q) % M for q in rows]  # staggered: a batch mixes depths
            for i, (q, j) in enumerate(zip(rows, example)):
                ref = corpus.train_batch(B, j, micro, rank, 2, 2)  # row i of the micro-batch of step j
                assert torch.equal(batch["input_ids"][i], ref["input_ids"][i])
                seen.setdefault((q, j), []).append(step)
    # each (row, example) is held for M consecutive steps (the first and last may be cut by the window)
    inner = {k: v for k, v in seen.items() if 0 < min(v) and max(v) < 11}
    assert inner and all(v == list(range(v[0], v[0] + M)) for v in inner.values())


def test_the_carried_state_continues_the_loop_across_steps():
    """Two steps of n = 0 on one slot equal one loop of 2 iterations from the same s₀."""
    model, corpus = _model(), _corpus()
    obj = DeepSupervisionObjective(DeepSupervisionConfig(segments=4, stagger=False))
    b0 = obj.train_batch(corpus, 4, 0, 0, 0, 1, 1)
    obj.loss(model, b0, 0)
    s0 = torch.stack([obj._fresh_state(model, b0["input_ids"].shape[1], q, 0) for q in range(4)])
    b1 = obj.train_batch(corpus, 4, 1, 0, 0, 1, 1)
    assert torch.equal(b0["input_ids"], b1["input_ids"]) and b1["age"] == [1] * 4
    loss, _ = obj.loss(model, b1, 1)
    with torch.no_grad():
        ce = model.recur(b1["input_ids"], 2, state=s0, labels=b1["target_ids"])
    w = b1["loss_weight"]
    assert loss.item() == pytest.approx(((ce * w).sum() / w.sum()).item(), abs=1e-6)
    # at the refill (step 4) every slot restarts from a fresh state
    for step in (2, 3, 4):
        batch = obj.train_batch(corpus, 4, step, 0, 0, 1, 1)
    assert batch["age"] == [0] * 4 and not torch.equal(batch["input_ids"], b0["input_ids"])


def test_state_dict_round_trip_and_a_changed_batch_is_refused():
    model, corpus = _model(), _corpus()
    obj = DeepSupervisionObjective(DeepSupervisionConfig(segments=4))
    for micro in (0, 1):
        obj.loss(model, obj.train_batch(corpus, 4, 0, micro, 0, 1, 2), 0)
    sd = obj.state_dict()
    other = DeepSupervisionObjective(DeepSupervisionConfig(segments=4))
    other.load_state_dict([sd], batch_size=4, world=1, grad_accum=2)
    assert other.states.keys() == {0, 4} and all(torch.equal(other.states[k], sd["states"][k]) for k in (0, 4))
    with pytest.raises(ConfigError, match="micro-batches of 4.*this run needs 16 in micro-batches of 8"):
        other.load_state_dict([sd], batch_size=8, world=1, grad_accum=2)
    with pytest.raises(ConfigError, match="segments=4"):
        DeepSupervisionObjective(DeepSupervisionConfig(segments=8)).load_state_dict([sd], 4, 1, 2)


def test_config_checks():
    with pytest.raises(ValueError, match="segments must be >= 1"):
        DeepSupervisionConfig(segments=0)
    with pytest.raises(ValueError, match="nograd_steps must be >= 0"):
        DeepSupervisionConfig(nograd_steps=-1)
    assert DeepSupervisionObjective(DeepSupervisionConfig(nograd_steps=1, segments=8)).default_num_steps == 16


def test_a_skipped_step_restarts_only_the_slots_whose_state_went_non_finite():
    """Finite steps never read the carried states back; after a skipped step the non-finite
    ones start over from the fresh state their next step would draw."""
    model, corpus = _model(), _corpus()
    obj = DeepSupervisionObjective(DeepSupervisionConfig(segments=4))
    batch = obj.train_batch(corpus, 4, 0, 0, 0, 1, 1)
    obj.loss(model, batch, 0)
    before = obj.states[0].clone()
    obj.states[0][2, 3, 0] = float("nan")
    obj.skipped_step(model, 0)
    s, T = obj.states[0], batch["input_ids"].shape[1]
    example = obj.schedule([2], 1)[0][0]
    assert torch.equal(s[2], obj._fresh_state(model, T, 2, example))
    assert all(torch.equal(s[i], before[i]) for i in (0, 1, 3)) and torch.isfinite(s).all()
