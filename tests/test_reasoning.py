import numpy as np
import pytest
import torch

from huginn_db.data.reasoning import CharTokenizer, ReasoningConfig, ReasoningCorpus, score


def _evaluate_chain(prompt: str) -> str:
    env = {}
    for stmt in prompt[:-3].split(";"):
        var, expr = stmt.split("=")
        if expr.isdigit():
            env[var] = int(expr)
        elif len(expr) == 1:  # copy
            env[var] = env[expr]
        else:
            x, op, c = env[expr[0]], expr[1], int(expr[2])
            env[var] = (x + c if op == "+" else x - c if op == "-" else x * c) % 10
    return str(env[prompt[-2]])


@pytest.mark.parametrize("ops", ["=", "+-*="])
@pytest.mark.parametrize("distractors", [0, 2, 4])
def test_chain_answers_are_correct_and_depth_is_the_hop_count(distractors, ops):
    corpus = ReasoningCorpus(ReasoningConfig(distractors=distractors, ops=ops), seed=0)
    rng = np.random.default_rng(0)
    for d in (1, 2, 3, 5):
        for _ in range(200):
            prompt, answer = corpus.example(rng, d)
            assert _evaluate_chain(prompt) == answer
            # the queried variable sits d operations away from a constant
            assert prompt.count(";") == d + 1 + distractors
            assert len(prompt) + 3 <= corpus.max_length([d])


def test_addition_task():
    corpus = ReasoningCorpus(ReasoningConfig(task="add"), seed=0)
    rng = np.random.default_rng(0)
    for _ in range(100):
        prompt, answer = corpus.example(rng, 3)
        a, b = prompt[:-1].split("+")
        assert len(a) == len(b) == 3 and int(a) + int(b) == int(answer)


def test_batches_are_deterministic_and_masks_cover_answer_and_eos():
    corpus = ReasoningCorpus(ReasoningConfig(), seed=3)
    a, b = corpus.train_batch(8, step=4, micro=1, rank=1, world=2), corpus.train_batch(8, step=4, micro=1, rank=1, world=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input_ids"], corpus.train_batch(8, step=4, micro=1, rank=0, world=2)["input_ids"])
    # 2 ranks x 1 micro-batch == 1 rank x 2 micro-batches
    assert torch.equal(corpus.train_batch(8, 3, 0, rank=1, world=2)["input_ids"], corpus.train_batch(8, 3, micro=1, grad_accum=2)["input_ids"])
    tok = corpus.tokenizer
    for i in range(8):
        row_in, row_tgt, m = a["input_ids"][i], a["target_ids"][i], a["loss_mask"][i]
        assert torch.equal(row_in[1:], row_tgt[:-1])  # targets are the inputs shifted by one
        scored = tok.decode(row_tgt[m].tolist() + [tok.eos_id])
        text = tok.decode(row_in.tolist())
        prompt = text[: text.index("?") + 1]
        assert scored == _evaluate_chain(prompt)
        assert row_tgt[m].tolist()[-1] == tok.eos_id


def test_test_set_is_fixed_and_spans_harder_difficulties():
    cfg = ReasoningConfig(train_difficulties=[1, 2], test_difficulties=[1, 2, 3, 4], test_examples=10)
    t1, t2 = ReasoningCorpus(cfg, 0).test_set(), ReasoningCorpus(cfg, 0).test_set()
    assert t1 == t2 and len(t1) == 40
    assert {ex["difficulty"] for ex in t1} == {1, 2, 3, 4}


def test_tokenizer_round_trip_and_errors():
    tok = CharTokenizer()
    s = "a=3;b=a+4;c=b*2;c?4"
    assert tok.decode(tok.encode(s)) == s
    assert tok.decode(tok.encode("12") + [tok.eos_id] + tok.encode("99")) == "12"
    with pytest.raises(ValueError, match="alphabet"):
        tok.encode("A=1")


def test_score_per_difficulty():
    ex = [{"difficulty": 1, "answer": "3"}, {"difficulty": 1, "answer": "4"}, {"difficulty": 2, "answer": "5"}]
    assert score(ex, ["3", "0", "5"]) == {"d1": 0.5, "d2": 1.0, "mean": 0.75}


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="task"):
        ReasoningCorpus(ReasoningConfig(task="sudoku"), 0)
    with pytest.raises(ValueError, match="ops"):
        ReasoningCorpus(ReasoningConfig(ops="/"), 0)
