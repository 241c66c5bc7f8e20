"""Bad input is refused before any work: one line naming the key and the fix, exit 2, and no
file of an existing run directory changed (issue 6, items 1, 2 and 6).

Every case runs the real CLI entry point (`huginn_db.train.main`, `huginn-db eval`) in this
process; the run directory holds a previous run's files, whose bytes and mtimes must survive.
"""

import json
import random

import pytest
import torch
from lm_eval.api.instance import Instance

from huginn_db import lm_eval as hl
from huginn_db.cli import main as cli
from huginn_db.data.reasoning import CharTokenizer
from huginn_db.errors import ConfigError
from huginn_db.tokenizer import train_sentencepiece
from huginn_db.train import main as train_main
from tests.conftest import RECIPES, one_rank_env, snapshot
from tests.test_lm_eval import _export

TINY = [
    "model.hidden=32",
    "model.heads=4",
    "model.mlp_hidden=64",
    "train.max_steps=2",
    "train.micro_batch_size=4",
    "train.threads=1",
    "train.precision=fp32",
    "eval.num_steps=[1]",
]


@pytest.fixture
def prior_run(tmp_path):
    """A run directory that already holds a run's files (what must not be touched)."""
    run = tmp_path / "run"
    (run / "checkpoints" / "step2").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n')
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "checkpoints" / "latest").write_text("step2")
    (run / "checkpoints" / "step2" / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    return run


@pytest.fixture
def world_of_one(monkeypatch):
    """Env of a one-process launch, so checks that run after distributed init can be reached
    in-process; restored afterwards (main() destroys the process group)."""
    for k, v in one_rank_env().items():
        monkeypatch.setenv(k, v)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def refused(capsys, argv, run, message, code=2):
    """Runs the trainer CLI; asserts exit code, a one-line error containing `message`, and that
    `run` (existing or not) is exactly as before."""
    before = snapshot(run)
    assert train_main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    lines = [l for l in err if l.startswith("huginn-db: error:")]
    assert len(lines) == 1 and message in lines[0], err[-5:]
    assert snapshot(run) == before
    return lines[0]


def demo(run, *overrides, objective="db"):
    return [str(RECIPES / f"demo-{objective}.yaml"), f"run_dir={run}", *TINY, *overrides]


# --- 1. config validation (before any work starts) --------------------------------------------

CONFIG_FAULTS = {
    "unknown_key": (["train.max_step=5"], "unknown key 'train.max_step' (did you mean 'train.max_steps'?)"),
    "unknown_section_key": (["model.hiden=64"], "did you mean 'model.hidden'?"),
    "wrong_type": (["train.lr=fast"], "train.lr: expected float, got 'fast'"),
    "wrong_type_list": (["eval.num_steps=4"], "eval.num_steps: expected a list"),
    "heads_do_not_divide_hidden": (["model.hidden=100", "model.heads=8"], "model.hidden=100 must split into heads=8"),
    "k_above_mean_recurrence": (["objective.bptt.backprop_depth=40"], "backprop_depth=40 exceeds mean_recurrence=8"),
    "sigma_min_above_sigma_max": (["objective.diffusion_blocks.sigma_min=100"], "need 0 < sigma_min < sigma_max"),
    "no_bands": (["objective.diffusion_blocks.num_bands=0"], "num_bands must be >= 1"),
    "no_unrolled_steps": (["objective.diffusion_blocks.unroll=0"], "unroll must be >= 1, got 0"),
    "negative_loss_chunk": (["model.loss_chunk=-1"], "model.loss_chunk must be >= 0"),
    "bad_precision": (["train.precision=fp16"], "train.precision must be auto|bf16|fp32"),
    "resume_and_overwrite": (["resume=auto", "overwrite=true"], "resume=auto and overwrite=true contradict"),
    "missing_deepspeed_json": (["deepspeed=deepspeed/nope.json"], "deepspeed: config file not found"),
    "bad_skip_policy": (["train.skip_nonfinite=-1"], "skip_nonfinite and save_every must be >= 0"),
    "zero_lr": (["train.lr=0"], "need lr > 0"),
    "compile_under_zero3": (["model.compile_core=true", "deepspeed=deepspeed/zero3.json"], "not supported with ZeRO-3"),
}


@pytest.mark.parametrize("fault", CONFIG_FAULTS)
def test_config_fault_is_refused_before_any_work(fault, prior_run, capsys):
    overrides, message = CONFIG_FAULTS[fault]
    refused(capsys, demo(prior_run, *overrides), prior_run, message)


def test_missing_recipe_and_bad_yaml(tmp_path, capsys):
    run = tmp_path / "run"
    refused(capsys, [str(tmp_path / "nope.yaml"), f"run_dir={run}"], run, "recipe not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [hidden: 64\n")
    refused(capsys, [str(bad), f"run_dir={run}"], run, "is not valid YAML")
    assert not run.exists()


def _ds_json(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return f"deepspeed={path}"


DS_FAULTS = {
    "micro_batch_contradicts": ({"train_micro_batch_size_per_gpu": 16}, "train_micro_batch_size_per_gpu=16 in"),
    "grad_accum_contradicts": ({"gradient_accumulation_steps": 4}, "contradicts train.grad_accum=1"),
    "clipping_contradicts": ({"gradient_clipping": 5.0}, "contradicts train.grad_clip=1.0"),
    "optimizer_section": ({"optimizer": {"type": "Adam"}}, "has an 'optimizer' section"),
    "fp16_section": ({"fp16": {"enabled": True}}, "enables fp16"),
    "not_json": ("{zero_optimization: 2", "is not valid JSON"),
}


@pytest.mark.parametrize("fault", DS_FAULTS)
def test_deepspeed_json_contradicting_the_recipe_is_refused(fault, tmp_path, prior_run, capsys):
    body, message = DS_FAULTS[fault]
    refused(capsys, demo(prior_run, _ds_json(tmp_path, "ds.json", body)), prior_run, message)


def test_deepspeed_train_batch_size_checked_against_the_world(tmp_path, prior_run, world_of_one, capsys):
    # the global batch needs the world size: checked after distributed init, before the run dir
    ds = _ds_json(tmp_path, "ds.json", {"train_batch_size": 64})
    refused(capsys, demo(prior_run, ds, "resume=auto"), prior_run, "train_batch_size=64 in ds.json contradicts")


def test_context_shorter_than_the_task_sequences(prior_run, world_of_one, capsys):
    refused(
        capsys,
        demo(prior_run, "model.context=16", "resume=auto"),
        prior_run,
        "model.context=16 is shorter than the longest reasoning example",
    )


def test_existing_run_is_not_overwritten(prior_run, world_of_one, capsys):
    refused(capsys, demo(prior_run), prior_run, "already holds a run; pass resume=auto, overwrite=true")


# --- 2. data faults ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    root = tmp_path_factory.mktemp("spm")
    rng = random.Random(0)
    words = "the a cat dog sat on mat ran big small red house tree sun day night and then".split()
    (root / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(300)))
    return train_sentencepiece([str(root / "corpus.txt")], 300, str(root / "spm"))


def _text(run, spm, path, *extra):
    return demo(
        run,
        "data.name=text",
        f"data.text.files=[{path}]",
        f"data.text.tokenizer={spm}",
        "data.text.seq_len=16",
        "model.context=16",
        "resume=auto",
        *extra,
    )


def _story(words=40, seed=0):
    rng = random.Random(seed)
    return " ".join(rng.choice("the cat sat on a mat and ran to the big red house".split()) for _ in range(words))


DATA_FAULTS = {
    "missing_file": (None, "data.text: file not found"),
    "empty_file": (b"", "data.text: file is empty"),
    "non_utf8": (b"good line\n\xff\xfe\xfa bad bytes\n", "UTF-8"),
    "jsonl_not_json": (lambda: (json.dumps({"text": _story()}) + "\n{not json\n").encode(), "not valid JSON"),
    "text_field_absent": (
        lambda: "".join(json.dumps({"body": _story(seed=i)}) + "\n" for i in range(20)).encode(),
        "has no field 'text'",
    ),
    "too_small_for_a_batch": (
        lambda: "".join(json.dumps({"text": _story(12, i)}) + "\n" for i in range(3)).encode(),
        "one micro-batch over all ranks needs 8",
    ),
}


@pytest.mark.parametrize("fault", DATA_FAULTS)
def test_data_fault_is_a_clear_error(fault, tmp_path, prior_run, spm, world_of_one, capsys):
    content, message = DATA_FAULTS[fault]
    name = tmp_path / ("data.txt" if fault in ("empty_file", "non_utf8") else "data.jsonl")
    if content is not None:
        name.write_bytes(content() if callable(content) else content)
    refused(capsys, _text(prior_run, spm, name, "train.micro_batch_size=8"), prior_run, message)


def test_missing_tokenizer_is_a_clear_error(tmp_path, prior_run, world_of_one, capsys):
    data = tmp_path / "data.txt"
    data.write_text("\n\n".join(_story(seed=i) for i in range(50)))
    refused(capsys, _text(prior_run, tmp_path / "none.model", data), prior_run, "tokenizer model not found")


REASONING_FAULTS = {
    "unknown_family": (
        ["data.reasoning.family=sudoku"],
        "data.reasoning.family must be one of chain|modsum|cups|perm|jsonl",
    ),
    "modulus_not_prime": (
        ["data.reasoning.family=chain", "data.reasoning.chain.modulus=6"],
        "chain.modulus must be a prime",
    ),
    "too_deep_for_the_letters": (
        ["data.reasoning.family=chain", "data.reasoning.test_difficulties=[1,15]"],
        "more than the 26 letters",
    ),
    "negative_prompt_weight": (["data.reasoning.prompt_loss_weight=-1"], "prompt_loss_weight must be >= 0"),
    "jsonl_without_files": (["data.reasoning.family=jsonl"], "data.reasoning.jsonl.train is not set"),
}


@pytest.mark.parametrize("fault", REASONING_FAULTS)
def test_reasoning_config_fault_is_refused(fault, prior_run, capsys):
    overrides, message = REASONING_FAULTS[fault]
    refused(capsys, demo(prior_run, *overrides), prior_run, message)


JSONL_FAULTS = {
    "not_json": ("{prompt", "train.jsonl:2: not a JSON object"),
    "missing_field": ('{"prompt": "1+1=", "answer": "2"}', "train.jsonl:2: missing field 'difficulty'"),
    "bad_difficulty": ('{"prompt": "1+1=", "answer": "2", "difficulty": "hard"}', "train.jsonl:2: difficulty must be"),
    "missing_difficulty": (None, "has no problems of difficulty 2"),
}


@pytest.mark.parametrize("fault", JSONL_FAULTS)
def test_own_task_file_fault_is_refused(fault, tmp_path, prior_run, capsys):
    line, message = JSONL_FAULTS[fault]
    good = json.dumps({"prompt": "1+2=", "answer": "3", "difficulty": 1})
    (tmp_path / "train.jsonl").write_text(good + "\n" + (line if line is not None else good) + "\n")
    (tmp_path / "test.jsonl").write_text(good + "\n")
    refused(
        capsys,
        demo(
            prior_run,
            "data.reasoning.family=jsonl",
            f"data.reasoning.jsonl.train={tmp_path / 'train.jsonl'}",
            f"data.reasoning.jsonl.test={tmp_path / 'test.jsonl'}",
            "data.reasoning.test_difficulties=[1]",
            f"data.reasoning.train_difficulties={[1, 2] if line is None else [1]}",
        ),
        prior_run,
        message,
    )


# --- 6. evaluation input -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {
        "bptt": _export(root / "bptt", "bptt", CharTokenizer(), context=24),
        "db": _export(root / "db", "diffusion_blocks", CharTokenizer(), context=24),
    }


@pytest.mark.parametrize("kind", ["bptt", "db"])
def test_request_longer_than_the_context_is_truncated_from_the_left(exports, kind):
    lm = hl.HuginnLM(str(exports[kind]), num_steps=2)
    ctx = "x=1;y=x;z=y;" * 4  # 48 characters against a context of 24
    cont = "z=1"
    [(long_ll, _)] = lm.loglikelihood([Instance("loglikelihood", {}, (ctx, cont), 0)], disable_tqdm=True)
    # lm-eval's HF model keeps the last max_length + 1 tokens of context + continuation
    ctx_enc, cont_enc = lm._encode_pair(ctx, cont)  # TemplateLM's split (BOS on the context)
    assert len(ctx_enc) + len(cont_enc) > lm.max_length + 1
    kept = (ctx_enc + cont_enc)[-(lm.max_length + 1) :]
    ctx_ids, cont_ids = kept[: -len(cont_enc)], kept[-len(cont_enc) :]
    [(short_ll, _)] = lm._loglikelihood_tokens([((None, None), ctx_ids, cont_ids)], disable_tqdm=True)
    assert torch.isfinite(torch.tensor(long_ll)) and long_ll == pytest.approx(short_ll, abs=1e-4)


def test_empty_continuation_scores_zero(exports):
    lm = hl.HuginnLM(str(exports["db"]), num_steps=2)
    [(ll, greedy)] = lm.loglikelihood([Instance("loglikelihood", {}, ("x=1;", ""), 0)], disable_tqdm=True)
    assert ll == 0.0 and greedy is True


def _eval(capsys, argv, directory, message):
    before = snapshot(directory)
    assert cli(["eval", *argv]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("huginn-db: error:")]
    assert len(err) == 1 and message in err[0], err
    assert snapshot(directory) == before


def test_unknown_task_name(exports, capsys):
    _eval(
        capsys,
        [str(exports["db"]), "--tasks", "reasoning_chian", "--limit", "1"],
        exports["db"],
        "unknown task 'reasoning_chian' (did you mean 'reasoning_chain'?)",
    )


def test_bptt_checkpoint_given_a_db_sampler(exports, capsys):
    _eval(
        capsys,
        [str(exports["bptt"]), "--model_args", "sampler=heun", "--limit", "1"],
        exports["bptt"],
        "sampler= does not apply to a bptt model",
    )


def test_db_checkpoint_given_an_unknown_sampler(exports, capsys):
    _eval(
        capsys,
        [str(exports["db"]), "--model_args", "sampler=ddim", "--limit", "1"],
        exports["db"],
        "sampler must be euler|heun",
    )


def test_eval_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    _eval(capsys, [str(tmp_path)], tmp_path, "is not a run or export directory")


def test_compare_refuses_an_unknown_task_before_training(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert cli(["compare", str(RECIPES / "demo-db.yaml"), "--tasks", "reasoning_cups_d99", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'reasoning_cups_d99'" in err and not out.exists()
    # the recipe's own benchmark beyond the generated difficulties is refused the same way
    assert (
        cli(["compare", str(RECIPES / "demo-db.yaml"), "--out", str(out), "data.reasoning.test_difficulties=[1,17]"])
        == 2
    )
    assert "unknown task 'reasoning_cups_d17'" in capsys.readouterr().err and not out.exists()


def test_local_cpu_ranks_are_refused_when_dev_shm_cannot_hold_their_collectives(monkeypatch):
    import collections

    from huginn_db.components import distributed

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(distributed.shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 100 * 2**20, 100 * 2**20))
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: False)
    for k, v in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", LOCAL_SIZE="2", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(k, v)
    started = []
    monkeypatch.setattr("deepspeed.init_distributed", lambda **kw: started.append(kw))
    with pytest.raises(ConfigError, match=r"/dev/shm has 100 MiB free, DeepSpeed's CPU collectives need 132 MiB for 2"):
        distributed.init_distributed()
    assert not started  # refused before any process group, instead of a rank dying of SIGBUS in it
    monkeypatch.setenv("LOCAL_SIZE", "1")  # ranks on two hosts: no segments, nothing to check
    distributed.check_shm_space()
