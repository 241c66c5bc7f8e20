"""The oracle control: every iteration supervised toward the generator's intermediate answer."""

import subprocess

import pytest
import torch

from huginn_db.config import ConfigError, load_config
from huginn_db.data.families.cups import CupsConfig, CupsFamily
from huginn_db.data.reasoning import ReasoningConfig, ReasoningCorpus
from huginn_db.model import ModelConfig, RecurrentDepthLM
from huginn_db.objectives.base import seed_of
from huginn_db.objectives.oracle import OracleConfig, OracleObjective
from tests.conftest import RECIPES, TINY_MODEL, metrics, train_command


def test_cups_trace_is_the_ball_after_each_swap():
    fam = CupsFamily(CupsConfig())
    # a: 1↔2 (ball 1 → 2), c: 2↔3 (→ 3), b: 1↔3 (→ 1), a (→ 2)
    assert fam.trace("acba=") == ["2", "3", "1", "2"]
    assert CupsFamily(CupsConfig(random_start=True)).trace("3:c=") == ["2"]
    rng = __import__("numpy").random.default_rng(0)
    for d in range(8):
        prompt, answer = fam.sample(rng, d)
        assert len(fam.trace(prompt)) == d + 1 and fam.trace(prompt)[-1] == answer


def test_step_labels_replace_only_the_answer_with_the_intermediate_one():
    corpus = ReasoningCorpus(ReasoningConfig(family="cups", train_difficulties=[0, 2, 7]), seed=0)
    obj = OracleObjective(OracleConfig(depth=8))
    batch = obj.train_batch(corpus, 16, step=3, micro=0, rank=0, world=1, grad_accum=1)
    plain = corpus.train_batch(16, 3)
    assert all(torch.equal(batch[k], plain[k]) for k in plain)  # the corpus's batch, untouched
    labels, tok = batch["step_target_ids"], corpus.tokenizer
    assert labels.shape == (16, 8, plain["target_ids"].shape[1])
    for i, row in enumerate(plain["input_ids"].tolist()):
        eq = row.index(tok.encode("=")[0])
        swaps = tok.decode(row[1:eq])
        trace = corpus.family.trace(swaps + "=")
        for t in range(8):
            other = torch.ones_like(labels[i, t], dtype=torch.bool)
            other[eq] = False
            assert torch.equal(labels[i, t][other], plain["target_ids"][i][other])
            assert tok.decode([labels[i, t, eq].item()]) == trace[min(t, len(swaps) - 1)]
        assert torch.equal(labels[i, -1], plain["target_ids"][i])  # 8 swaps at most: the last is the answer


def test_oracle_loss_is_the_mean_over_iterations_and_its_last_term_is_full_bptt():
    torch.manual_seed(0)
    model = RecurrentDepthLM(ModelConfig(**{**TINY_MODEL, "vocab_size": 20}))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 20, (3, 7), generator=g)
    steps = torch.randint(0, 20, (3, 4, 7), generator=g)
    seed = seed_of(0, 0, 3)  # the objective's draw of s₀ at slot 0
    ce = model(ids, num_steps=4, generator=torch.Generator().manual_seed(seed), step_labels=steps)
    full = model(ids, num_steps=4, generator=torch.Generator().manual_seed(seed), labels=steps[:, -1])
    assert ce.shape == (3, 4, 7) and torch.equal(ce[:, -1], full)
    w = torch.zeros(3, 7)
    w[:, 5:] = 1.0
    batch = {"input_ids": ids, "target_ids": steps[:, -1], "loss_weight": w, "step_target_ids": steps}
    obj = OracleObjective(OracleConfig(depth=4))
    loss, stats = obj.loss(model, batch, step=0, slot=0)
    assert stats == {"r": 4, "no_grad_iters": 0, "grad_iters": 4}
    assert loss.item() == pytest.approx(((ce * w[:, None]).sum() / (4 * w.sum())).item(), rel=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in model.core.parameters())


def test_oracle_needs_a_family_that_knows_its_intermediate_answers():
    with pytest.raises(ConfigError, match="objective oracle needs intermediate answers, which family modsum"):
        load_config(RECIPES / "demo-db.yaml", ["objective.name=oracle", "data.reasoning.family=modsum"])


@pytest.mark.slow
def test_oracle_trains_through_the_engine(tmp_path):
    run = tmp_path / "oracle"
    args = [str(RECIPES / "demo-db.yaml"), f"run_dir={run}", "objective.name=oracle", "objective.oracle.depth=4"]
    args += ["train.max_steps=40", "train.micro_batch_size=32", "train.log_every=10", "train.warmup_steps=5"]
    args += ["model.hidden=64", "model.mlp_hidden=128", "data.reasoning.test_examples=10", "eval.num_steps=[4]"]
    args += ["data.reasoning.train_difficulties=[0,1,2,3]", "data.reasoning.test_difficulties=[1,2]"]
    proc = subprocess.run(train_command(args), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in metrics(run) if "loss" in r]
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"] and all(r["r"] == 4 for r in rows)
