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


@pytest.mark.parametrize("n,k", [(0, 1), (3, 1), (2, 3)])
def test_step_runs_n_no_grad_and_k_grad_core_iterations(n, k):
    model, corpus = _model(), _corpus()
    obj = DeepSupervisionObjective(DeepSupervisionConfig(nograd_steps=n, grad_steps=k, segments=4))
    c = CoreCounter(model)
    for step in range(3):
        c.n, c.grad = 0, []
        loss, stats = obj.loss(model, obj.train_batch(corpus, 8, step, 0, 0, 1, 1), step)
        assert c.n == stats["r"] == n + k and c.grad == [False] * n + [True] * k
        assert (stats["no_grad_iters"], stats["grad_iters"]) == (n, k)
        loss.backward()
    assert model.prelude[0].attn.qkv.weight.grad.abs().sum() > 0


def test_grad_steps_backpropagate_through_k_iterations_from_the_detached_state():
    """k = 2: the backward reaches both grad iterations' outputs, and not the carried state."""
    model, corpus = _model(), _corpus()
    obj = DeepSupervisionObjective(DeepSupervisionConfig(nograd_steps=1, grad_steps=2, segments=4))
    obj.loss(model, obj.train_batch(corpus, 4, 0, 0, 0, 1, 1), 0)
    reached, inputs = [], []

    def hook(mod, args, out):
        inputs.append(args[0].requires_grad)
        if out.requires_grad:
            out.register_hook(lambda g: reached.append(g.abs().sum().item()))

    model.core.register_forward_hook(hook)
    loss, _ = obj.loss(model, obj.train_batch(corpus, 4, 1, 0, 0, 1, 1), 1)
    loss.backward()
    assert inputs == [False, False, True]  # the no-grad and first grad iteration start from detached states
    assert len(reached) == 2 and all(g > 0 for g in reached)
    assert not obj.states[0].requires_grad


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
    with pytest.raises(ValueError, match="grad_steps must be >= 1, got 0"):
        DeepSupervisionConfig(grad_steps=0)
    with pytest.raises(ValueError, match=r"damping must be in \[0, 1\), got 1"):
        DeepSupervisionConfig(damping=1.0)
    with pytest.raises(ValueError, match=r"damping must be in \[0, 1\)"):
        DeepSupervisionConfig(damping=-0.1)
    with pytest.raises(ValueError, match="state_noise must be >= 0"):
        DeepSupervisionConfig(state_noise=-1.0)
    with pytest.raises(ValueError, match=r"loss_weights must be uniform\|linear\|last, got 'first'"):
        DeepSupervisionConfig(loss_weights="first")
    assert DeepSupervisionObjective(DeepSupervisionConfig(nograd_steps=1, segments=8)).default_num_steps == 16
    cfg = DeepSupervisionConfig(nograd_steps=1, grad_steps=3, segments=8)
    assert DeepSupervisionObjective(cfg).default_num_steps == 32  # M·(n + k)


def test_segment_weights_have_mean_one_and_last_supervises_only_the_last_segment():
    M = 4
    for mode in ("uniform", "linear", "last"):
        cfg = DeepSupervisionConfig(segments=M, loss_weights=mode)
        assert sum(cfg.segment_weight(j) for j in range(M)) == pytest.approx(M)
    linear = DeepSupervisionConfig(segments=M, loss_weights="linear")
    assert [linear.segment_weight(j) for j in range(M)] == pytest.approx([0.4, 0.8, 1.2, 1.6])
    last = DeepSupervisionConfig(segments=M, loss_weights="last")
    assert [last.segment_weight(j) for j in range(M)] == [0, 0, 0, M]


@pytest.mark.parametrize("mode", ["linear", "last"])
def test_loss_weights_scale_each_rows_share_by_its_segment(mode):
    """Step 0 of staggered slots: ages 0 1 2 3 0 1 2 3, every row from its fresh state."""
    model, corpus = _model(), _corpus()
    obj = DeepSupervisionObjective(DeepSupervisionConfig(segments=4, loss_weights=mode))
    batch = obj.train_batch(corpus, 8, 0, 0, 0, 1, 1)
    ids, T = batch["input_ids"], batch["input_ids"].shape[1]
    s0 = torch.stack([obj._fresh_state(model, T, q, j) for q, j in zip(batch["rows"], batch["example"])])
    with torch.no_grad():
        ce = model.recur(ids, 1, state=s0, labels=batch["target_ids"])
    w, seg = batch["loss_weight"], torch.tensor([obj.cfg.segment_weight(a) for a in batch["age"]])
    loss, _ = obj.loss(model, batch, 0)
    assert loss.item() == pytest.approx(((ce * w * seg[:, None]).sum() / w.sum()).item(), rel=1e-6)
    if mode == "last":  # only the rows at their last segment (age 3) count, with weight M
        assert batch["age"] == [0, 1, 2, 3] * 2 and seg.tolist() == [0, 0, 0, 4] * 2
        last = [3, 7]
        assert loss.item() == pytest.approx(4 * (ce[last] * w[last]).sum().item() / w.sum().item(), rel=1e-6)


def _run(cfg, steps, model=None, obj=None, start=0):
    """`steps` SGD steps of deep supervision on one micro-batch of 4 slots: (losses, model, objective)."""
    model = model if model is not None else _model()
    obj, corpus = obj if obj is not None else DeepSupervisionObjective(cfg, seed=3), _corpus()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for step in range(start, start + steps):
        loss, _ = obj.loss(model, obj.train_batch(corpus, 4, step, 0, 0, 1, 1), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, model, obj


def test_state_noise_is_deterministic_and_a_resume_draws_it_again():
    noisy = DeepSupervisionConfig(segments=3, grad_steps=2, state_noise=0.5, damping=0.05, loss_weights="linear")
    a, model_a, obj_a = _run(noisy, 5)
    b, _, obj_b = _run(noisy, 5)
    plain, _, _ = _run(DeepSupervisionConfig(segments=3, grad_steps=2, damping=0.05, loss_weights="linear"), 5)
    assert a == b and torch.equal(obj_a.states[0], obj_b.states[0])  # same seed: the same numbers
    assert a[0] == plain[0] and all(x != y for x, y in zip(a[1:], plain[1:]))  # step 0 carries nothing
    # resume after step 2 from the objective's state_dict and the weights
    _, model_c, obj_c = _run(noisy, 2)
    sd, weights = obj_c.state_dict(), {k: v.clone() for k, v in model_c.state_dict().items()}
    model_d = _model()
    model_d.load_state_dict(weights)
    obj_d = DeepSupervisionObjective(noisy, seed=3)
    obj_d.load_state_dict([sd], batch_size=4, world=1, grad_accum=1)
    rest, model_d, obj_d = _run(noisy, 3, model_d, obj_d, start=2)
    assert a[2:] == rest and torch.equal(obj_a.states[0], obj_d.states[0])
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_d.parameters()))


def test_damping_is_the_damped_update_at_every_iteration_and_zero_is_the_plain_loop():
    model, corpus = _model(), _corpus()
    ids = corpus.train_batch(2, 0, 0, 0, 1, 1)["input_ids"]
    T, a = ids.shape[1], 0.25
    s0 = model.initial_state(torch.empty(2, T, model.cfg.hidden), torch.Generator().manual_seed(0))
    with torch.no_grad():
        e, s = model.encode(ids), s0
        for _ in range(3):
            s = a * s + (1 - a) * model.core_step(s, e)
        want = model.decode(s)
        assert torch.allclose(model.recur(ids, 3, 1, state=s0, damping=a), want, atol=1e-5)
        assert torch.equal(model.recur(ids, 3, state=s0, damping=0.0), model.recur(ids, 3, state=s0))
    obj = DeepSupervisionObjective(DeepSupervisionConfig(segments=2, damping=a))
    assert torch.allclose(obj.logits(model, ids, 3, noise=s0), want, atol=1e-5)  # inference damps too


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
