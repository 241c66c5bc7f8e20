"""The lm-eval model `huginn_db` and the local tasks, on tiny randomly initialised exports."""

import math
import os
import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from lm_eval.api.instance import Instance
from safetensors.torch import save_file

from huginn_db import lm_eval as hl
from huginn_db.config import RunConfig, to_dict
from huginn_db.data.reasoning import CharTokenizer
from huginn_db.model import ModelConfig, RecurrentDepthLM
from huginn_db.objectives import generate
from huginn_db.tokenizer import SentencePieceTokenizer, train_sentencepiece

LOCAL_TASKS = [
    "reasoning_chain",
    "reasoning_modsum",
    "reasoning_cups",
    "reasoning_perm",
    "tinystories_local",
    "wikitext2_local",
    "lm1b_local",
    "arc_easy_local",
    "arc_challenge_local",
    "hellaswag_local",
    "piqa_local",
    "winogrande_local",
    "openbookqa_local",
    "lambada_openai_local",
    "gsm8k_local",
]
FAST = dict(bootstrap_iters=0, log_samples=False)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def _export(directory, objective: str, tok, context: int):
    """An export directory as huginn-db export writes it: config.yaml, model.safetensors, tokenizer."""
    directory.mkdir()
    cfg = RunConfig()
    cfg.objective.name = objective
    cfg.objective.bptt.mean_recurrence, cfg.objective.bptt.backprop_depth = 2, 1
    cfg.objective.diffusion_blocks.num_bands = 3
    cfg.model = ModelConfig(
        vocab_size=tok.vocab_size,
        hidden=32,
        heads=4,
        mlp_hidden=64,
        prelude_layers=1,
        core_layers=1,
        coda_layers=1,
        context=context,
        init_recurrence=2,
        sigma_conditioning=objective == "diffusion_blocks",
    )
    model = RecurrentDepthLM(cfg.model)
    for name, p in model.named_parameters():
        if ".ada." in name:  # a trained-looking denoiser: σ changes the computation
            torch.nn.init.normal_(p, std=0.1)
    (directory / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    tok.save(directory)
    return directory


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    rng = random.Random(0)
    words = "the a cat dog sat on mat ran big small red house tree sun day night and then so Question Answer".split()
    lines = [
        " ".join(rng.choice(words) + rng.choice(["", ",", ".", "?", " 12", "'s"]) for _ in range(12))
        for _ in range(300)
    ]
    (root / "corpus.txt").write_text(
        "\n".join(lines) + "\nABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 +-*/=()[]<>:;\"'#$%&@\n"
    )
    spm = SentencePieceTokenizer(train_sentencepiece([str(root / "corpus.txt")], 400, str(root / "spm")))
    return {
        "bptt": _export(root / "bptt", "bptt", CharTokenizer(), context=24),
        "db": _export(root / "db", "diffusion_blocks", CharTokenizer(), context=24),
        "db_text": _export(root / "db_text", "diffusion_blocks", spm, context=16),
    }


MODELS = {"bptt": ("bptt", None), "db-context": ("db", "context"), "db-final": ("db", "final")}


def _lm(runs, kind, **kw):
    run, score = MODELS[kind]
    return hl.HuginnLM(str(runs[run]), num_steps=3, score=score, **kw)


def _requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]


def _brute_logprobs(lm, row):
    """Per-position next-token log-probs of one unbatched, unpadded row under lm's score."""
    steps = 1 if lm.score_name == "context" else lm.num_steps
    logits = lm.objective.logits(lm.model, torch.tensor([row]), steps, noise=lm.noise(row), **lm._sampler_kw)
    return F.log_softmax(logits.float(), -1)[0]


@pytest.mark.parametrize("kind", MODELS)
def test_loglikelihood_is_the_brute_force_sum_of_token_logprobs(runs, kind):
    lm = _lm(runs, kind, batch_size=3)
    L = lm.max_length
    pairs = [
        ("a=1;b=a;b?", "1"),
        ("x=2;", "y=x;y?2"),
        ("", "k=3;k?"),
        ("q=" + "a=1;" * 8, "b=2;b?"),
        ("a=1;b=a;", "c=b;c?1;" * 4),
    ]  # left truncation; a continuation longer than the context
    got = lm.loglikelihood(_requests("loglikelihood", pairs))
    for (ctx, cont), (ll, _) in zip(pairs, got):
        whole = [lm.prefix_token_id] + lm.tok.encode(ctx + cont)
        first = len(whole) - len(cont)  # character tokens: the continuation is the last len(cont)
        expected = 0.0
        for a in range(first, len(whole), L):  # pieces of ≤ L tokens, each with the context that fits
            b = min(a + L, len(whole))
            start = max(0, b - 1 - L)
            lp = _brute_logprobs(lm, whole[start : b - 1])  # row position k predicts whole[start + k + 1]
            expected += sum(float(lp[p - start - 1, whole[p]]) for p in range(a, b))
        assert ll == pytest.approx(expected, abs=1e-4)
    # batching and order do not change a score: draws are seeded by the request's tokens
    alone = lm.loglikelihood(_requests("loglikelihood", pairs[:1]))
    assert alone[0][0] == pytest.approx(got[0][0], abs=1e-5)


@pytest.mark.parametrize("kind", MODELS)
def test_is_greedy_marks_exactly_the_argmax(runs, kind):
    lm = _lm(runs, kind, batch_size=16)
    ctx = "a=1;b=a;b?"
    row = [lm.prefix_token_id] + lm.tok.encode(ctx)
    best = int(_brute_logprobs(lm, row)[-1].argmax())
    symbols = lm.tok.itos[3:]  # every non-special token as a one-token continuation
    got = lm.loglikelihood(_requests("loglikelihood", [(ctx, s) for s in symbols]))
    assert [g for _, g in got] == [lm.tok.stoi[s] == best for s in symbols]


def test_empty_continuations_score_zero(runs):
    lm = _lm(runs, "db-context")
    got = lm.loglikelihood(_requests("loglikelihood", [("a=1;", ""), ("", ""), ("", "a")]))
    assert got[:2] == [(0.0, True), (0.0, True)]
    lp = _brute_logprobs(lm, [lm.prefix_token_id])
    assert got[2][0] == pytest.approx(float(lp[0, lm.tok.stoi["a"]]), abs=1e-5)  # empty context: BOS


@pytest.mark.parametrize("kind", ["bptt", "db-context"])
def test_rolling_windows_score_every_token_once(runs, kind):
    lm = _lm(runs, kind, batch_size=2)
    text = "a=1;b=a;c=b;" * 6 + "c?1"  # 75 tokens, context 24
    tokens, L = lm.tok.encode(text), lm.max_length
    padded = [lm.prefix_token_id] + tokens
    expected, covered = 0.0, []
    for a in range(0, len(tokens), L):  # tokens[a:b] predicted from the L tokens before each
        b = min(a + L, len(tokens))
        start = max(0, b - L)
        lp = _brute_logprobs(lm, padded[start:b])  # padded[i] is the input that predicts tokens[i]
        expected += sum(float(lp[j - start, tokens[j]]) for j in range(a, b))
        covered += range(a, b)
    assert covered == list(range(len(tokens)))
    (got,) = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]))
    assert got == pytest.approx(expected, abs=1e-3)
    assert lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [("",)])) == [0.0]


def test_generate_until_stops_at_a_stop_sequence(runs):
    lm = _lm(runs, "bptt", batch_size=4)
    prompts = ["a=1;b=a;b?", "k=5;", "x=1;y=2;", "q=", "z=9;z=", "b=3;c=b;c?"]
    free = lm.generate_until(_requests("generate_until", [(p, {"max_gen_toks": 8}) for p in prompts]))
    assert all(len(lm.tok.encode(t)) <= 8 for t in free)
    # the wrapper is objectives.generate with the request's own seed, cut at EOS
    for p, text in zip(prompts, free):
        ids = torch.tensor([lm.tok_encode(p)])
        new = generate(
            lm.objective, lm.model, ids, 8, lm.eot_token_id, num_steps=3, seed=[lm.request_seed(ids[0].tolist())]
        )
        assert lm.tok.decode(new[0]) == text
    prompt, text = next((p, t) for p, t in zip(prompts, free) if len(t) >= 4)
    stop = text[2]
    ids = torch.tensor([lm.tok_encode(prompt)])
    new = generate(
        lm.objective, lm.model, ids, 8, lm.eot_token_id, num_steps=3, seed=[lm.request_seed(ids[0].tolist())]
    )
    # tokens until the stop shows in the decoded text (specials decode to nothing, so count tokens)
    until = next(n for n in range(1, new.shape[1] + 1) if stop in lm.tok.decode(new[0, :n]))
    calls = []
    lm.model.core.register_forward_hook(lambda *a: calls.append(1))
    (cut,) = lm.generate_until(_requests("generate_until", [(prompt, {"until": [stop], "max_gen_toks": 8})]))
    assert cut == text.split(stop)[0]
    assert len(calls) == 3 * until  # decoding stopped at the stop sequence


def test_bf16_autocast_scores_close_to_fp32(runs):
    pairs = [("a=1;b=a;b?", "1")]
    fp32 = _lm(runs, "db-final").loglikelihood(_requests("loglikelihood", pairs))[0][0]
    bf16 = _lm(runs, "db-final", dtype="bfloat16").loglikelihood(_requests("loglikelihood", pairs))[0][0]
    assert bf16 == pytest.approx(fp32, abs=0.1)


def test_options_that_do_not_apply_are_refused(runs):
    with pytest.raises(ValueError, match="score must be recurrence for a bptt model"):
        hl.HuginnLM(str(runs["bptt"]), score="context")
    with pytest.raises(ValueError, match="sampler= does not apply to a bptt model"):
        hl.HuginnLM(str(runs["bptt"]), sampler="euler")
    with pytest.raises(ValueError, match="context\\|final"):
        hl.HuginnLM(str(runs["db"]), score="mean")
    lm = hl.HuginnLM.create_from_arg_string(f"checkpoint={runs['db']},batch_size=5", {"batch_size": 1, "device": None})
    assert lm.batch_size == 5 and lm.score_name == "context" and lm.num_steps == 3  # K defaults to num_bands


def test_ranks_get_disjoint_halves_of_the_documents(runs, monkeypatch):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(hl.task_dir()), include_defaults=False)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # a launcher already joined
    docs = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        lm = _lm(runs, "bptt")
        assert (lm.rank, lm.world_size) == (rank, 2)
        task = manager.load("reasoning_chain_d1")["tasks"]["reasoning_chain_d1"]
        task.build_all_requests(limit=6, rank=lm.rank, world_size=lm.world_size)
        docs.append({i.doc_id for i in task.instances})
    assert len(docs[0]) == len(docs[1]) == 3 and docs[0] | docs[1] == set(range(6))


def test_task_dir_resolves_the_data_root(tmp_path):
    d = hl.task_dir(tmp_path)
    assert d == hl.task_dir(tmp_path)  # written once
    text = (d / "arc_challenge_local.yaml").read_text()
    assert "${" not in text and f"{tmp_path.resolve()}/arc/ARC-Challenge-Test.jsonl" in text
    assert (d / "utils.py").is_file() and (d / "_reasoning_template_yaml").is_file()
    # one generated task per registered family and difficulty, a group per generated family
    from huginn_db.data.families import FAMILIES

    for family in FAMILIES:
        top = hl.reasoning_difficulties(family)[-1]
        assert (d / f"reasoning_{family}_d{top}.yaml").is_file() and not (
            d / f"reasoning_{family}_d{top + 1}.yaml"
        ).exists()
        assert (d / f"reasoning_{family}.yaml").is_file() == (family != "jsonl")


def test_every_registered_task_loads(data_root, tmp_path):
    """Every task the local TaskManager lists builds its documents: the generated ones up to the
    difficulty their family's defaults can make (chain's 26 letters stop at d11), jsonl's from a
    jsonl run's file, the local ones from the data root."""
    import json as _json

    from lm_eval.tasks import TaskManager

    from huginn_db.config import load_config

    rows = [{"prompt": f"{d}+1=", "answer": str((d + 1) % 10), "difficulty": d} for d in range(1, 17)]
    (tmp_path / "own.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    cfg = load_config(
        str(Path(__file__).parent / "assets" / "golden.yaml"),
        [
            "data.reasoning.family=jsonl",
            "data.reasoning.train_difficulties=[1,2]",
            "data.reasoning.test_difficulties=[1,2]",
            f"data.reasoning.jsonl.train={tmp_path / 'own.jsonl'}",
            f"data.reasoning.jsonl.test={tmp_path / 'own.jsonl'}",
        ],
    )
    run = tmp_path / "jsonl-run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    assert hl.reasoning_difficulties("chain")[-1] == 11
    manager = TaskManager(
        include_path=str(hl.task_dir(data_root)), include_defaults=False, metadata={"checkpoint": str(run)}
    )
    names = [t for t in manager.all_subtasks if not t.startswith("_")]
    assert "reasoning_chain_d11" in names and "reasoning_chain_d12" not in names and "reasoning_cups_d16" in names
    assert set(LOCAL_TASKS) <= set(manager.all_tasks)
    loaded = manager.load(names)["tasks"]
    for name in names:
        docs = loaded[name].eval_docs
        assert len(docs) > 0, name


def test_cli_is_lm_eval_with_the_model_and_local_tasks(monkeypatch):
    import lm_eval.__main__
    from lm_eval.api.registry import get_model

    assert get_model("huginn_db") is hl.HuginnLM
    seen = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: seen.append(list(sys.argv[1:])))
    monkeypatch.setattr(sys, "argv", ["huginn_db.lm_eval"])
    hl.main(["--model", "huginn_db", "--tasks", "reasoning_chain"])
    hl.main(["ls", "tasks", "--include_path", "/x"])
    assert seen[0] == [
        "run",
        "--model",
        "huginn_db",
        "--tasks",
        "reasoning_chain",
        "--include_path",
        str(hl.task_dir()),
    ]
    assert seen[1] == ["ls", "tasks", "--include_path", "/x"]


def test_every_local_task_runs_offline(runs, data_root, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    res = hl.evaluate(runs["db_text"], LOCAL_TASKS, [2], limit=2, data_root=data_root, **FAST)[2]["results"]
    for task in LOCAL_TASKS[4:] + [
        f"reasoning_{f}_d{d}" for f in ("chain", "modsum", "cups", "perm") for d in range(1, 9)
    ]:
        metrics = {k: v for k, v in res[task].items() if "," in k and "stderr" not in k}
        assert metrics and all(math.isfinite(v) for v in metrics.values()), (task, res[task])
    assert all(res[f"reasoning_{f}"]["sample_len"] == 16 for f in ("chain", "modsum", "cups", "perm"))  # 8 × limit 2


def test_reasoning_tasks_score_the_distribution_the_checkpoint_trained_on(runs, tmp_path):
    """lm-eval hands model_args to the task as metadata: the problems follow the run's recipe
    (here mod 7, three chains), and a task of another family falls back to its defaults."""
    import dataclasses

    from huginn_db.data.reasoning import ReasoningConfig, ReasoningCorpus

    run = tmp_path / "mod7"
    run.mkdir()
    cfg = yaml.safe_load((runs["bptt"] / "config.yaml").read_text())
    cfg["data"]["reasoning"]["chain"].update(modulus=7, chains=3)
    cfg["data"]["reasoning"]["test_seed"] = 11
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    for name in ("model.safetensors", "tokenizer.json"):
        (run / name).write_bytes((runs["bptt"] / name).read_bytes())
    out = hl.evaluate(run, ["reasoning_chain_d2", "reasoning_modsum_d3"], [1], limit=4, **dict(FAST, log_samples=True))[
        1
    ]
    docs = {t: [s["doc"] for s in out["samples"][t]] for t in out["samples"]}
    ours = ReasoningConfig(test_difficulties=[2], test_examples=4, test_seed=11)
    ours.chain = dataclasses.replace(ours.chain, modulus=7, chains=3)
    assert docs["reasoning_chain_d2"] == ReasoningCorpus(ours, 0).test_set()
    assert (
        docs["reasoning_chain_d2"]
        != ReasoningCorpus(ReasoningConfig(test_difficulties=[2], test_examples=4), 0).test_set()
    )
    assert (
        docs["reasoning_modsum_d3"]
        == ReasoningCorpus(ReasoningConfig(family="modsum", test_difficulties=[3], test_examples=4), 0).test_set()
    )


def test_text_tasks_score_only_what_the_checkpoints_run_held_out(runs, data_root, task_utils, tmp_path):
    """A model trained on the TinyStories file is scored on its own validation documents (the
    split its corpus drew with its seed), not on the text it trained on; another model on all."""
    from huginn_db.data.text import TextConfig, TextDocuments

    run = tmp_path / "stories"
    run.mkdir()
    cfg = yaml.safe_load((runs["db_text"] / "config.yaml").read_text())
    cfg["seed"] = 3
    cfg["data"]["name"] = "text"
    cfg["data"]["text"].update(files=["tinystories/tinystories_val.txt"], val_fraction=0.02, data_root=None, seq_len=16)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    for name in ("model.safetensors", "tokenizer.model", "tokenizer.json"):
        (run / name).write_bytes((runs["db_text"] / name).read_bytes())
    path = str(data_root / "tinystories" / "tinystories_val.txt")
    everything = task_utils.text_blocks({"validation": path})["validation"]["text"]
    docs, val, train = TextDocuments(TextConfig(files=[path], val_fraction=0.02)).split(3)
    assert [d for _, d in docs] == everything  # the task's documents are the corpus's
    own = task_utils.text_blocks({"validation": path}, checkpoint=str(run))["validation"]["text"]
    assert own == [docs[i][1] for i in val] and len(own) == round(0.02 * len(everything))
    assert sorted([*val, *train]) == list(range(len(docs)))
    # the only texts in both are one-line story ends ("The end.", 26 of the 4,302 documents)
    assert set(own) & {docs[i][1] for i in train} <= {"The end.", "The End."}
    out = hl.evaluate(run, ["tinystories_local"], [1], limit=2, data_root=data_root, **dict(FAST, log_samples=True))[1]
    assert [s["doc"]["text"] for s in out["samples"]["tinystories_local"]] == own[:2]
    assert (
        task_utils.text_blocks({"validation": path}, checkpoint=str(runs["bptt"]))["validation"]["text"] == everything
    )


def test_own_task_files_become_lm_eval_tasks(runs, tmp_path):
    """A jsonl run's reasoning_jsonl_d<k> tasks are its test file's problems of difficulty k."""
    import json as _json

    rows = [
        {"prompt": f"{a}+{b}=", "answer": str((a + b) % 10), "difficulty": 1 + (a + b) % 2}
        for a in range(10)
        for b in range(3)
    ]
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "own"
    run.mkdir()
    cfg = yaml.safe_load((runs["bptt"] / "config.yaml").read_text())
    cfg["data"]["reasoning"].update(
        family="jsonl",
        train_difficulties=[1, 2],
        test_difficulties=[1, 2],
        jsonl={"train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.jsonl")},
    )
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    for name in ("model.safetensors", "tokenizer.json"):
        (run / name).write_bytes((runs["bptt"] / name).read_bytes())
    out = hl.evaluate(run, ["reasoning_jsonl_d2"], [1], limit=5, **dict(FAST, log_samples=True))[1]
    docs = [s["doc"] for s in out["samples"]["reasoning_jsonl_d2"]]
    assert (
        docs == [{"difficulty": 2, **{k: r[k] for k in ("prompt", "answer")}} for r in rows if r["difficulty"] == 2][:5]
    )


def test_num_steps_sweep(runs, monkeypatch):
    from huginn_db.objectives.bptt import BPTTObjective

    used, real = set(), BPTTObjective.logits
    monkeypatch.setattr(
        BPTTObjective,
        "logits",
        lambda self, model, ids, num_steps=None, **kw: used.add(num_steps) or real(self, model, ids, num_steps, **kw),
    )
    import torch.utils.collect_env as collect_env

    gathered = []  # lm-eval's environment report (0.8 s): gathered once for all the depths
    monkeypatch.setattr(collect_env, "get_pretty_env_info", lambda: gathered.append(1) or "env report")
    out = hl.evaluate(runs["bptt"], ["reasoning_chain_d1", "reasoning_chain_d2"], [1, 2], limit=2, **FAST)
    assert sorted(out) == [1, 2] and used == {1, 2}
    assert all(out[K]["results"]["reasoning_chain_d2"]["sample_len"] == 2 for K in out)
    assert gathered == [1] and [out[K]["pretty_env_info"] for K in out] == ["env report"] * 2


# --- the local standard tasks against stock lm-eval -------------------------------------------


@pytest.fixture(scope="module")
def task_utils():
    import importlib.util

    spec = importlib.util.spec_from_file_location("local_task_utils", hl.TASKS_SRC / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STANDARD = [
    "arc_easy_local",
    "arc_challenge_local",
    "hellaswag_local",
    "piqa_local",
    "winogrande_local",
    "openbookqa_local",
    "gsm8k_local",
    "wikitext2_local",
]


@pytest.fixture(scope="module")
def standard_tasks():
    root = Path(os.environ.get("HUGINN_DB_DATA", hl.REPO.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set HUGINN_DB_DATA)")
    return hl.task_manager(STANDARD, root).load(STANDARD)["tasks"]


def _klosax_field(text: str) -> str:
    """One field as extract_hellaswag.cpp writes it into the local dump (shared/data/README.md):
    the 4 markers dropped, double spaces collapsed once, one outer space stripped."""
    for marker in ("[header]", "[step]", "[substeps]"):
        text = text.replace(marker, "")
    text = text.replace(" [title]", ". ").replace("[title] ", "").replace("[title].", "").replace("  ", " ")
    return text[1:] if text.startswith(" ") else text


def _klosax_dump(records: list[dict]) -> str:
    lines = []
    for r in records:
        ctx = r["ctx_a"] + " " + r["ctx_b"] if r["ctx_b"] else r["ctx_a"]  # the original file's ctx
        lines += [_klosax_field(r["activity_label"]) + ": " + _klosax_field(ctx).rstrip(" "), str(r["label"])]
        lines += [_klosax_field(e).rstrip(" ") for e in r["endings"]]
    return "\n".join(lines) + "\n"


HELLASWAG_RECORDS = [  # in the original schema, as stock's process_docs reads them
    {
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "label": "3",
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
    },
    {
        "activity_label": "Hand car wash",
        "ctx_a": ".",
        "ctx_b": "a man in a red shirt and TV gloves",
        "label": "0",
        "endings": ["washes the car.", "sits down.", "talks to the camera.", "leaves."],
    },
    {
        "activity_label": "Playing harmonica",
        "ctx_a": "1 a guy plays. 2 a guy talks about it!",
        "ctx_b": "3 the guy",
        "label": "1",
        "endings": ["plays again.", "stops.", "waves.", "bows."],
    },
    {
        "activity_label": "Family Life",
        "ctx_b": "",
        "label": "2",
        "ctx_a": "[header] How to entertain a toddler [title] Ask the toddler what to do. [step] Visit a site like "
        "[www.kiddio.org] to find activities.",
        "endings": [
            "Try arts and crafts. [substeps] See [find a good attorney | how to find a good attorney].",
            "Make sure the kid is old enough.",
            'Search for " local events in [insert name of town].',
            "Go outside [title] Play in the park [step] Run.",
        ],
    },
]


def test_hellaswag_local_builds_stock_prompts_from_the_dump(task_utils, tmp_path):
    import datasets
    from lm_eval.tasks.hellaswag.utils import process_docs

    path = tmp_path / "dump.txt"
    path.write_text(_klosax_dump(HELLASWAG_RECORDS))
    ours = task_utils.hellaswag(str(path))["validation"]
    stock = process_docs(datasets.Dataset.from_list(HELLASWAG_RECORDS))
    assert ours["query"] == stock["query"]  # ctx_b capitalised (and the rest of it lowercased), [...] dropped
    assert ours["query"][:2] == [
        "Roof shingle removal: A man is sitting on a roof. He",
        "Hand car wash: . A man in a red shirt and tv gloves",
    ]
    assert ours["choices"] == stock["choices"] and ours["label"] == [int(g) for g in stock["gold"]]
    # not restorable: stock keeps the space a leading marker leaves, the dump strips it
    lead = {
        **HELLASWAG_RECORDS[3],
        "endings": ["[substeps] Try arts and crafts."] + HELLASWAG_RECORDS[3]["endings"][1:],
    }
    path.write_text(_klosax_dump([lead]))
    (ours,) = task_utils.hellaswag(str(path))["validation"]["choices"]
    (stock,) = process_docs(datasets.Dataset.from_list([lead]))["choices"]
    assert stock[0] == " " + ours[0] and stock[1:] == ours[1:]


def test_hellaswag_local_on_the_shared_dump(standard_tasks):
    import re as _re

    task = standard_tasks["hellaswag_local"]
    docs = list(task.eval_docs)
    assert len(docs) == 10042
    assert task.doc_to_text(docs[0]) == "Roof shingle removal: A man is sitting on a roof. He"
    assert docs[1]["query"].endswith("She bends down and grabs the pole. The lady")
    kiddio = next(d["query"] for d in docs if d["query"].startswith("Family Life: How to entertain a toddler."))
    assert "Visit a site like to find loads of creative activities" in kiddio  # "[www.kiddio.org]" dropped
    assert not any(_re.search(r"\[.*?\]", t) for d in docs for t in [d["query"], *d["choices"]])
    # every ActivityNet context (the 3,243 that end mid-sentence) got its ctx_b capitalised
    tails = [_re.split(r"(?<=[.!?]) ", d["query"].split(": ", 1)[1])[-1] for d in docs if d["query"][-1] not in ".!?"]
    assert len(tails) == 3243 and all(not t[0].islower() for t in tails)


def test_arc_challenge_local_keeps_the_original_order(standard_tasks, data_root):
    import json as _json

    def ids(name):
        return [_json.loads(line)["id"] for line in (data_root / "arc" / name).read_text().splitlines()]

    got = [d["id"] for d in standard_tasks["arc_challenge_local"].eval_docs]
    genmc, letters = ids("ARC-Challenge-Test.jsonl"), ids("ARC-Challenge-Test.letter-labels-only.jsonl")
    assert len(got) == len(set(got)) == 1172 and set(got) == set(genmc) | set(letters)
    for source in (genmc, letters):  # each file is a subsequence of the original split, in order
        assert [i for i in got if i in set(source)] == source
    # the letter-labelled file's neighbours of the 2 extra items are adjacent in GenMC's copy
    assert got[58:61] == ["TAKS_2009_8_32", "Mercury_412681", "Mercury_400440"]
    assert got[87:90] == ["ACTAAP_2009_7_8", "MCAS_2006_9_43", "Mercury_7252088"]
    assert {"Mercury_412681", "MCAS_2006_9_43"} <= set(got[:100])  # so --limit 100 scores them, as stock does


def test_arc_merge_puts_items_at_their_places_or_refuses(task_utils):
    merge = task_utils._merge_in_order

    def docs(s):
        return [{"id": c} for c in s]

    def order(a, b):
        return "".join(d["id"] for d in merge(docs(a), docs(b), "b.jsonl"))

    assert order("abde", "bcd") == "abcde" and order("bcd", "abde") == "abcde"
    assert order("bc", "abcd") == "abcd" and order("", "ab") == "ab"
    assert merge([{"id": "a", "x": 1}], [{"id": "a", "x": 2}], "b")[0]["x"] == 1  # the first file's copy wins
    with pytest.raises(ValueError, match="cannot place c"):
        order("abxd", "abcd")  # x and c share the gap between b and d: their order is unknown
    with pytest.raises(ValueError, match="another order"):
        order("abc", "cb")


# (split the few-shot examples come from, is it the scored split); stock uses train for all
FEWSHOT = {
    "gsm8k_local": ("train", False),
    "arc_easy_local": ("validation", False),
    "arc_challenge_local": ("validation", False),
    "hellaswag_local": ("validation", True),
    "piqa_local": ("validation", True),
    "winogrande_local": ("validation", True),
    "openbookqa_local": ("test", True),
}


@pytest.mark.parametrize("name", FEWSHOT)
def test_fewshot_examples_come_from_the_split_stock_uses_where_there_is_one(standard_tasks, name):
    task = standard_tasks[name]
    split, scored = FEWSHOT[name]
    pool = list(task.fewshot_docs())
    assert pool == list(task.dataset[split])
    assert (pool == list(task.eval_docs)) == scored
    if scored:  # lm-eval leaves the scored item out of its own examples only when the splits match
        assert task.fewshot_cfg.split == task.config.test_split


@pytest.mark.parametrize("name", ["openbookqa_local", "hellaswag_local"])
def test_a_scored_item_is_never_its_own_fewshot_example(standard_tasks, name):
    task = standard_tasks[name]
    doc = next(iter(task.eval_docs))
    answer = task.doc_to_choice(doc)[task.doc_to_target(doc)]
    example = task.doc_to_text(doc) + task.config.target_delimiter + answer
    others = len(list(task.fewshot_docs())) - 1
    shots = task.fewshot_context(doc=doc, num_fewshot=others)[
        : -len(task.doc_to_text(doc))
    ]  # every other item, shuffled
    assert example not in shots and shots.count(task.config.fewshot_delimiter) == others


def test_caveats_travel_with_the_results(standard_tasks):
    from huginn_db.report import task_caveats

    caveats = task_caveats()
    assert "not comparable to lm-eval wikitext" in caveats["wikitext2_local"]
    assert "approximates stock hellaswag" in caveats["hellaswag_local"]
    assert "arc_challenge_local" not in caveats and "gsm8k_local" not in caveats
    configs = {t: task.dump_config() for t, task in standard_tasks.items()}
    assert hl.result_caveats({"configs": configs}) == {t: c for t, c in caveats.items() if t in STANDARD}
