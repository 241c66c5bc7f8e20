import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch

from huginn_db.data.audit import audit, format_audit
from huginn_db.data.families import FAMILIES, ChainConfig, CupsConfig, JsonlConfig
from huginn_db.data.reasoning import CharTokenizer, ReasoningConfig, ReasoningCorpus, score
from huginn_db.tokenizer import load_tokenizer

GENERATED = [f for f in FAMILIES if f != "jsonl"]


# --- independent evaluators: what each prompt means --------------------------------------------


def _chain(prompt: str, p: int = 5) -> tuple[str, int, dict]:
    """(answer, depth of the queried variable, parent map) by interpreting the statements."""
    body, query = prompt[:-1].rsplit(";?", 1)
    env, depth, parent = {}, {}, {}
    for stmt in body.split(";"):
        var, expr = stmt.split("=")
        assert var not in env, "every variable is assigned once"
        if expr.isdigit():
            env[var], depth[var] = int(expr), 0
        else:
            src = expr[0]
            assert src in env, "definition before use"
            x = env[src]
            env[var] = (
                x
                if len(expr) == 1
                else {"+": x + int(expr[2]), "-": x - int(expr[2]), "*": x * int(expr[2])}[expr[1]] % p
            )
            depth[var], parent[var] = depth[src] + 1, src
    return str(env[query]), depth[query], parent


def _modsum(prompt: str, p: int = 5) -> tuple[str, int]:
    xs = [int(x) for x in prompt[:-1].split("+")]
    return str(sum(xs) % p), len(xs) - 1


def _perm(prompt: str) -> tuple[str, int]:
    perms = list(itertools.permutations(range(3)))
    state = list(range(3))  # where each item is after the permutations so far
    for letter in prompt[:-1]:
        g = perms["abcdef".index(letter)]
        state = [g[s] for s in state]
    return "abcdef"[perms.index(tuple(state))], len(prompt) - 2


def _cups(prompt: str) -> tuple[str, int]:
    start, moves = prompt[:-1].split(":") if ":" in prompt else ("1", prompt[:-1])
    ball = int(start)
    for m in moves:
        i, j = {"a": (1, 2), "b": (1, 3), "c": (2, 3)}[m]
        ball = j if ball == i else i if ball == j else ball
    return str(ball), len(moves) - 1


# --- the generated families --------------------------------------------------------------------


@pytest.mark.parametrize("ops", ["+-", "+-*", "=+-"])
@pytest.mark.parametrize("chains,distractors", [(1, 0), (2, 2), (3, 4)])
def test_chain_answers_depth_and_layout(ops, chains, distractors):
    corpus = ReasoningCorpus(
        ReasoningConfig(chain=ChainConfig(ops=ops, chains=chains, distractors=distractors), test_difficulties=[1, 6]),
        seed=0,
    )
    rng = np.random.default_rng(0)
    n, last_is_query, query_root_first = 0, 0, 0
    for d in (1, 2, 3, 6):
        for _ in range(100):
            prompt, answer = corpus.family.sample(rng, d)
            got, depth, parent = _chain(prompt)
            assert (got, depth) == (answer, d)
            stmts = prompt.rsplit(";?", 1)[0].split(";")
            assert sum(st.split("=")[1].isdigit() for st in stmts) == chains  # one root constant per chain
            # the query chain has d operations, every other chain 1..d, plus the distractors
            assert 2 * chains - 1 + d + distractors <= len(stmts) <= chains * (d + 1) + distractors
            assert len(prompt) + len(answer) <= corpus.family.max_length(d)
            root = prompt[-2]
            while root in parent:
                root = parent[root]
            n += 1
            last_is_query += stmts[-1].split("=")[0] == prompt[-2]
            query_root_first += stmts[0].split("=")[0] == root
    if chains > 1 or distractors:
        assert last_is_query == 0  # the queried statement is never the last one
    if chains > 1:  # the query's root is anywhere, not first (the old shortcut)
        assert query_root_first / n < 0.8


def test_chain_hops_change_the_value():
    """With +/- by a nonzero constant, every statement's value differs from its source's."""
    fam = FAMILIES["chain"](ChainConfig(ops="+-", chains=2, distractors=2))
    rng = np.random.default_rng(1)
    for _ in range(300):
        prompt, _ = fam.sample(rng, 4)
        body = prompt.rsplit(";?", 1)[0]
        values = {st.split("=")[0]: _chain(f"{body};?{st.split('=')[0]}=")[0] for st in body.split(";")}
        for st in body.split(";"):
            var, expr = st.split("=")
            if not expr.isdigit():
                assert values[var] != values[expr[0]]


def test_cups_random_start_and_difficulty_zero():
    corpus = ReasoningCorpus(ReasoningConfig(family="cups", cups=CupsConfig(random_start=True)), seed=0)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        prompt, answer = corpus.family.sample(rng, 3)
        assert _cups(prompt) == (answer, 3) and prompt[1] == ":"
        starts.add(prompt[0])
    assert starts == {"1", "2", "3"}
    with pytest.raises(
        ValueError, match=r"test_difficulties must be .* >= 1, got \[0, 1\] \(difficulty 0.*training warm-up"
    ):
        ReasoningCorpus(ReasoningConfig(family="cups", test_difficulties=[0, 1]), 0)


def test_chain_rejects_what_it_cannot_make():
    with pytest.raises(ValueError, match="prime"):
        ReasoningCorpus(ReasoningConfig(chain=ChainConfig(modulus=6)), 0)
    with pytest.raises(ValueError, match="ops"):
        ReasoningCorpus(ReasoningConfig(chain=ChainConfig(ops="/")), 0)
    with pytest.raises(ValueError, match="26 letters"):
        ReasoningCorpus(ReasoningConfig(test_difficulties=[20]), 0)
    with pytest.raises(ValueError, match="family must be one of"):
        ReasoningCorpus(ReasoningConfig(family="sudoku"), 0)
    with pytest.raises(ValueError, match="train_difficulties"):
        ReasoningCorpus(ReasoningConfig(train_difficulties=[-1]), 0)


@pytest.mark.parametrize("family,check", [("modsum", _modsum), ("perm", _perm), ("cups", _cups)])
def test_modsum_perm_and_cups_answers_and_difficulty(family, check):
    corpus = ReasoningCorpus(ReasoningConfig(family=family, train_difficulties=[0, 1]), seed=0)
    rng = np.random.default_rng(0)
    for d in (0, 1, 2, 5, 9):
        for _ in range(200):
            prompt, answer = corpus.family.sample(rng, d)
            assert check(prompt) == (answer, d)
            assert len(prompt) + len(answer) <= corpus.family.max_length(d)


@pytest.mark.parametrize("family", GENERATED)
def test_batches_are_pure_functions_of_the_slot_and_weigh_answer_and_eos(family):
    corpus = ReasoningCorpus(ReasoningConfig(family=family), seed=3)
    a, b = (
        corpus.train_batch(8, step=4, micro=1, rank=1, world=2),
        corpus.train_batch(8, step=4, micro=1, rank=1, world=2),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input_ids"], corpus.train_batch(8, step=4, micro=1, rank=0, world=2)["input_ids"])
    # 2 ranks x 1 micro-batch == 1 rank x 2 micro-batches
    assert torch.equal(
        corpus.train_batch(8, 3, 0, rank=1, world=2)["input_ids"],
        corpus.train_batch(8, 3, micro=1, grad_accum=2)["input_ids"],
    )
    tok = corpus.tokenizer
    meaning = {
        "chain": lambda p: _chain(p)[0],
        "modsum": lambda p: _modsum(p)[0],
        "perm": lambda p: _perm(p)[0],
        "cups": lambda p: _cups(p)[0],
    }[family]
    for i in range(8):
        row_in, row_tgt, w = a["input_ids"][i], a["target_ids"][i], a["loss_weight"][i]
        assert torch.equal(row_in[1:], row_tgt[:-1])  # targets are the inputs shifted by one
        scored = row_tgt[w > 0].tolist()
        assert len(scored) == 2 and scored[-1] == tok.eos_id and set(w.unique().tolist()) == {0.0, 1.0}
        # the scored symbol is the answer of the prompt before it
        start = int((w > 0).nonzero()[0])
        assert tok.decode(scored) == meaning(tok.decode(row_in[: start + 1].tolist()))


def test_prompt_loss_weight_gives_the_prompt_w_times_the_answer_weight():
    cfg = ReasoningConfig(prompt_loss_weight=0.25)
    corpus = ReasoningCorpus(cfg, seed=0)
    batch = corpus.train_batch(16, 0)
    plain = ReasoningCorpus(dataclasses.replace(cfg, prompt_loss_weight=0.0), seed=0).train_batch(16, 0)
    assert torch.equal(batch["input_ids"], plain["input_ids"])
    for w, w0, ids in zip(batch["loss_weight"], plain["loss_weight"], batch["input_ids"]):
        answer = w0 > 0
        prompt = (w > 0) & ~answer
        assert torch.equal(w[answer], w0[answer])
        assert int(prompt.sum()) == int((ids != 0).sum()) - 1 - int(answer.sum())  # every prompt token after BOS
        assert float(w[prompt].sum()) == pytest.approx(0.25 * float(w0.sum()))


def test_test_sets_are_fixed_by_test_seed_not_run_seed():
    cfg = ReasoningConfig(test_difficulties=[1, 2, 3, 4], test_examples=10)
    t0, t1 = ReasoningCorpus(cfg, 0).test_set(), ReasoningCorpus(cfg, 1).test_set()
    assert t0 == t1 and len(t0) == 40 and {ex["difficulty"] for ex in t0} == {1, 2, 3, 4}
    assert ReasoningCorpus(dataclasses.replace(cfg, test_seed=5), 0).test_set() != t0
    assert ReasoningCorpus(dataclasses.replace(cfg, test_examples=20), 0).test_set()[:10] == t0[:10]
    # training batches do follow the run seed
    assert not torch.equal(
        ReasoningCorpus(cfg, 0).train_batch(4, 0)["input_ids"], ReasoningCorpus(cfg, 1).train_batch(4, 0)["input_ids"]
    )


# --- the shortcut audit ------------------------------------------------------------------------


@pytest.mark.parametrize("family", GENERATED)
def test_every_family_passes_the_shortcut_audit(family):
    """CI gate: no trivial predictor beats chance by more than 5 points at d1–d8."""
    corpus = ReasoningCorpus(ReasoningConfig(family=family, test_difficulties=list(range(1, 9))), seed=0)
    rows = audit(corpus, examples=2000)
    assert [r["difficulty"] for r in rows] == list(range(1, 9))
    assert all(r["pass"] for r in rows), format_audit(rows)
    assert all(len(r["scores"]) > 100 for r in rows)  # the whole battery ran


def test_the_audit_catches_the_old_shortcut():
    """Copy chains with the root first (the corpus this benchmark replaced) fail, and the audit
    names the predictor that solves them."""
    corpus = ReasoningCorpus(
        ReasoningConfig(chain=ChainConfig(ops="=", chains=1, distractors=0), test_difficulties=[1, 4]), seed=0
    )
    rows = audit(corpus, examples=500)
    assert not any(r["pass"] for r in rows)
    assert all(r["best_accuracy"] == 1.0 and r["scores"]["first_constant"] == 1.0 for r in rows)
    # a single in-order arithmetic chain queried at its end: the last statement's value is the answer
    corpus = ReasoningCorpus(ReasoningConfig(chain=ChainConfig(chains=1, distractors=0), test_difficulties=[3]), seed=0)
    (row,) = audit(corpus, examples=500)
    assert not row["pass"] and row["scores"]["last_statement"] == 1.0


def test_audit_cli(capsys, tmp_path):
    from huginn_db.cli import main
    from tests.conftest import RECIPES

    assert main(["audit", str(RECIPES / "demo-bptt.yaml")]) == 0
    out = capsys.readouterr().out
    assert "shortcut audit" in out and "| d1 |" in out and "FAIL" not in out
    assert (
        main(
            [
                "audit",
                str(RECIPES / "demo-bptt.yaml"),
                "--examples",
                "500",
                "data.reasoning.family=chain",
                "data.reasoning.chain.ops==",
                "data.reasoning.chain.chains=1",
                "data.reasoning.chain.distractors=0",
                "data.reasoning.test_difficulties=[1,2]",
                "data.reasoning.train_difficulties=[1]",
            ]
        )
        == 1
    )
    assert "fails the shortcut audit" in capsys.readouterr().err
    assert main(["audit", str(RECIPES / "text-small-db.yaml")]) == 2
    assert "the audit applies to the reasoning families" in capsys.readouterr().err


# --- bring your own task -----------------------------------------------------------------------


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _own_task(tmp_path, n=300):
    rng = np.random.default_rng(0)
    rows = {"train": [], "test": []}
    for split in rows:
        for i in range(n):
            d = int(rng.integers(1, 3 if split == "train" else 4))  # d3 is never trained on
            xs = rng.integers(0, 7, size=d + 1)
            rows[split].append(
                {"prompt": "sum " + " ".join(map(str, xs)) + " ->", "answer": str(int(xs.sum()) % 7), "difficulty": d}
            )
    return JsonlConfig(
        train=_write_jsonl(tmp_path / "train.jsonl", rows["train"]),
        test=_write_jsonl(tmp_path / "test.jsonl", rows["test"]),
    )


def test_jsonl_family_trains_tests_and_audits(tmp_path):
    cfg = ReasoningConfig(
        family="jsonl",
        jsonl=_own_task(tmp_path),
        train_difficulties=[1, 2],
        test_difficulties=[1, 2, 3],
        test_examples=50,
    )
    corpus = ReasoningCorpus(cfg, seed=0)
    tok = corpus.tokenizer
    assert " " in tok.stoi and ">" in tok.stoi and tok.itos[:45] == CharTokenizer().itos
    test = corpus.test_set()
    assert [ex["difficulty"] for ex in test].count(3) == 50
    first = [
        json.loads(l) for l in (tmp_path / "test.jsonl").read_text().splitlines() if json.loads(l)["difficulty"] == 1
    ]
    assert [ex["prompt"] for ex in test if ex["difficulty"] == 1] == [r["prompt"] for r in first[:50]]
    batch = corpus.train_batch(4, 0)
    text = tok.decode(batch["input_ids"][0].tolist())
    assert text.startswith("sum ") and "->" in text
    rows = audit(corpus, examples=1000)
    assert [r["difficulty"] for r in rows] == [1, 2, 3] and rows[0]["chance"] == pytest.approx(1 / 7)
    assert "majority_answer" not in rows[2]["scores"]  # d3 has no training problems to fit on
    # the tokenizer of a run round-trips through tokenizer.json with its extra characters
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.itos == tok.itos and again.decode(again.encode("sum 1 2 ->")) == "sum 1 2 ->"


@pytest.mark.parametrize(
    "line,message",
    [
        ("not json", r"train.jsonl:2: not a JSON object"),
        ('{"prompt": "x", "answer": "1"}', r"train.jsonl:2: missing field 'difficulty'"),
        ('{"prompt": "x", "answer": "", "difficulty": 1}', r"answer non-empty"),
        ('{"prompt": "x", "answer": "1", "difficulty": 0}', r"difficulty must be an integer >= 1"),
        ("[1, 2]", r"expected a JSON object"),
    ],
)
def test_jsonl_bad_lines_name_file_and_line(tmp_path, line, message):
    good = json.dumps({"prompt": "a", "answer": "1", "difficulty": 1})
    (tmp_path / "train.jsonl").write_text(good + "\n" + line + "\n")
    (tmp_path / "test.jsonl").write_text(good + "\n")
    cfg = ReasoningConfig(
        family="jsonl",
        jsonl=JsonlConfig(str(tmp_path / "train.jsonl"), str(tmp_path / "test.jsonl")),
        train_difficulties=[1],
        test_difficulties=[1],
    )
    with pytest.raises(ValueError, match=message):
        ReasoningCorpus(cfg, 0)


def test_jsonl_missing_files_and_difficulties(tmp_path):
    with pytest.raises(ValueError, match="jsonl.train is not set"):
        ReasoningCorpus(ReasoningConfig(family="jsonl"), 0)
    jl = _own_task(tmp_path, n=30)
    with pytest.raises(ValueError, match=r"test_difficulties: .*has no problems of difficulty 5"):
        ReasoningCorpus(ReasoningConfig(family="jsonl", jsonl=jl, train_difficulties=[1], test_difficulties=[1, 5]), 0)
    with pytest.raises(ValueError, match="file not found"):
        ReasoningCorpus(ReasoningConfig(family="jsonl", jsonl=JsonlConfig(str(tmp_path / "nope.jsonl"), jl.test)), 0)


# --- tokenizer and scoring ---------------------------------------------------------------------


def test_tokenizer_round_trip_and_errors():
    tok = CharTokenizer()
    s = "a=3;b=a+4;c=b*2;?c=4"
    assert tok.decode(tok.encode(s)) == s
    assert tok.decode(tok.encode("12") + [tok.eos_id] + tok.encode("99")) == "12"
    with pytest.raises(ValueError, match="alphabet"):
        tok.encode("A=1")


def test_score_per_difficulty():
    ex = [{"difficulty": 1, "answer": "3"}, {"difficulty": 1, "answer": "4"}, {"difficulty": 2, "answer": "5"}]
    assert score(ex, ["3", "0", "5"]) == {"d1": 0.5, "d2": 1.0, "mean": 0.75}
