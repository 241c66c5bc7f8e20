"""Refusals before anything is scored: a task whose text the model's tokenizer cannot encode,
a local task whose data file is missing — one line, exit 2, in both entry points."""

import os
import subprocess
import sys

import pytest

from huginn_db.errors import ConfigError
from huginn_db.lm_eval import evaluate
from huginn_db.tokenizer import CharTokenizer
from tests.test_lm_eval import _export


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("pre") / "bptt", "bptt", CharTokenizer(), context=64)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, env=env)


def test_a_character_model_is_not_sent_to_an_english_task(char_run):
    with pytest.raises(ConfigError, match=r"task arc_easy_local: the model's tokenizer \(reasoning, 45 tokens"):
        evaluate(char_run, ["reasoning_cups_d1", "arc_easy_local"], [2], limit=2)
    proc = _cli("-m", "huginn_db.cli", "eval", str(char_run), "--tasks", "reasoning_cups_d1,arc_easy_local")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "cannot encode" in err[0] and "arc_easy_local" in err[0], err
    assert not (char_run / "eval").exists()  # nothing scored, nothing written


def test_lm_evals_own_cli_refuses_it_in_one_line_too(char_run):
    proc = _cli(
        "-m",
        "huginn_db.lm_eval",
        "--model",
        "huginn_db",
        "--model_args",
        f"checkpoint={char_run},num_steps=2",
        "--tasks",
        "arc_easy_local",
    )
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert last.startswith("huginn_db.lm_eval: error: task arc_easy_local:") and "cannot encode" in last


def test_a_missing_data_file_names_the_task_the_path_and_the_data_root(char_run, tmp_path):
    env = {**os.environ, "HUGINN_DB_DATA": str(tmp_path / "nowhere")}
    proc = _cli("-m", "huginn_db.cli", "eval", str(char_run), "--tasks", "arc_easy_local", env=env)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr[-2000:]
    assert f"task arc_easy_local: data file {tmp_path / 'nowhere' / 'arc' / 'ARC-Easy-Dev.jsonl'} not found" in err[0]
    assert f"data root {tmp_path / 'nowhere'}" in err[0] and "HUGINN_DB_DATA" in err[0] and "'arc_easy'" in err[0]


def test_a_text_runs_own_benchmark_is_the_perplexity_task_over_its_corpus():
    from huginn_db.config import load_config
    from huginn_db.lm_eval import default_tasks
    from tests.conftest import RECIPES

    assert default_tasks(load_config(RECIPES / "paper-lm1b-cpu-db.yaml")) == ["lm1b_local"]
    assert default_tasks(load_config(RECIPES / "text-small-db.yaml")) == ["tinystories_local"]
    wiki = load_config(RECIPES / "text-small-db.yaml", ["data.text.files=[wikitext-2/valid.txt]"])
    assert default_tasks(wiki) == ["wikitext2_local"]
