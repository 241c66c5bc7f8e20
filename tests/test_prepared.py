"""Prepared text sets: tokenized once in parallel, read by the same index rule as the in-memory
corpus (the same windows, so the same losses), restartable, and refused when they do not fit."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from huginn_db.cli import main as cli
from huginn_db.data import prepared as P
from huginn_db.data.text import TextConfig, TextCorpus
from tests.conftest import RECIPES, clean_env, metrics
from tests.test_text_data import _docs, _jsonl

# a text run small enough to train a few steps in a test
TINY_TEXT_RUN = [
    "model.hidden=32",
    "model.mlp_hidden=64",
    "train.micro_batch_size=4",
    "train.log_every=1",
    "train.threads=1",
    "eval.num_steps=[1]",
    "eval.max_val_batches=1",
    "train.precision=fp32",
]


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _text(tmp_path, n=120, **kw) -> TextConfig:
    path = _jsonl(tmp_path / "docs.jsonl", _docs(n, length=7))
    return TextConfig(**{"files": [str(path)], "seq_len": 9, "val_fraction": 0.1, **kw})


def test_prepared_windows_equal_the_in_memory_corpus_and_shards_by_rank(tmp_path):
    text = _text(tmp_path)
    manifest = P.prepare(text, 0, tmp_path / "set", num_proc=2, shard_docs=7, progress=False)
    mem, prep = TextCorpus(text, 0), TextCorpus(TextConfig(**{**vars(text), "prepared": str(tmp_path / "set")}), 0)
    assert manifest["dtype"] == "uint16" and manifest["splits"]["val"]["documents"] == 12
    assert manifest["splits"]["train"]["tokens"] == 108 * 8  # 7 characters + eos per document
    assert np.array_equal(prep._train[0 : len(prep._train)], mem._train)
    assert np.array_equal(prep._val[0 : len(prep._val)], mem._val)
    for step in range(4):  # 2 ranks × 2 micro-batches: the same rows as in memory, disjoint, every window
        rows = [prep.train_batch(3, step, m, r, 2, 2)["input_ids"] for m in (0, 1) for r in (0, 1)]
        assert all(
            torch.equal(a, mem.train_batch(3, step, m, r, 2, 2)["input_ids"])
            for a, (m, r) in zip(rows, [(0, 0), (0, 1), (1, 0), (1, 1)])
        )
    epoch = [
        tuple(r)
        for s in range(len(prep._train) // 12)
        for m in (0, 1)
        for rk in (0, 1)
        for r in prep.train_batch(3, s, m, rk, 2, 2)["input_ids"].tolist()
    ]
    assert len(set(epoch)) == len(epoch) == len(prep._train) // 12 * 12
    held = json.loads((tmp_path / "set" / "val.jsonl").read_text().splitlines()[0])
    assert held["source"] == text.files[0] and held["text"] in _docs(120, length=7)


def test_a_killed_prepare_redoes_only_the_shards_it_had_not_finished(tmp_path, monkeypatch):
    text, done = _text(tmp_path), []
    real = P._encode_shard
    monkeypatch.setattr(P, "_encode_shard", lambda task: done.append(task[0]) or real(task))
    monkeypatch.setattr(P, "_split_shards", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # every shard written, killed before the set is published
        P.prepare(text, 0, tmp_path / "set", shard_docs=10, progress=False)
    first, done[:] = list(done), []
    assert len(first) == 12 and not (tmp_path / "set").exists()
    monkeypatch.undo()
    monkeypatch.setattr(P, "_encode_shard", lambda task: done.append(task[0]) or real(task))
    (tmp_path / "set.tmp" / "shards" / "shard-000004.bin").unlink()  # one shard never finished
    P.prepare(text, 0, tmp_path / "set", shard_docs=10, progress=False)
    assert [p.rsplit("/", 1)[1] for p in done] == ["shard-000004"]
    assert (
        not (tmp_path / "set.tmp").exists() and P.read_manifest(tmp_path / "set")["splits"]["train"]["documents"] == 108
    )


def _refusal(tmp_path, **kw) -> str:
    with pytest.raises(ValueError) as err:
        TextCorpus(TextConfig(**{**vars(_text(tmp_path)), "prepared": str(tmp_path / "set"), **kw}), 0)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_a_prepared_set_that_does_not_fit_the_run_is_refused_in_one_line(tmp_path, spm_tok):
    P.prepare(_text(tmp_path), 0, tmp_path / "set", progress=False)
    assert "tokenized with reasoning" in _refusal(tmp_path, tokenizer=str(spm_tok.model_path))
    assert "split_seed=0, val_fraction=0.1, this run asks for 3" in _refusal(tmp_path, split_seed=3)
    assert "the train split has 864 tokens but one sequence needs" in _refusal(tmp_path, seq_len=1000)
    manifest = json.loads((tmp_path / "set" / "manifest.json").read_text())
    (tmp_path / "set" / "manifest.json").write_text(json.dumps({**manifest, "format": 99}))
    assert "is format 99, this huginn_db reads format 1" in _refusal(tmp_path)
    (tmp_path / "set" / "manifest.json").write_text(json.dumps(manifest))
    with open(tmp_path / "set" / "train.bin", "r+b") as f:
        f.truncate(100)
    assert "train.bin is 100 bytes, the manifest says 1728 (truncated" in _refusal(tmp_path)
    (tmp_path / "set" / "train.bin").unlink()
    assert "train.bin is missing" in _refusal(tmp_path)
    assert "not a prepared set" in _refusal(tmp_path, prepared=str(tmp_path))


def test_the_command_writes_a_set_and_refuses_an_existing_one_leaving_it_untouched(tmp_path, capsys, data_root):
    recipe = RECIPES / "text-small-db.yaml"
    text = (data_root / "tinystories" / "tinystories_val.txt").read_text()[:20_000]
    (tmp_path / "ts.txt").write_text(text)
    args = [str(recipe), f"data.text.files=[{tmp_path / 'ts.txt'}]", "data.text.tokenizer=reasoning"]
    # the reasoning alphabet cannot spell TinyStories: a one-line refusal, nothing left behind
    assert cli(["data", "prepare", *args, "--out", str(tmp_path / "set")]) == 2
    assert "cannot encode this corpus" in capsys.readouterr().err and not (tmp_path / "set").exists()
    (tmp_path / "ts.txt").write_text("".join(c for c in text.lower() if c in "abcdefghijklmnopqrstuvwxyz\n"))
    assert cli(["data", "prepare", *args, "--out", str(tmp_path / "set"), "--num-proc", "2"]) == 0
    assert "train with data.text.prepared=" in capsys.readouterr().out
    before = {p.name: p.read_bytes() for p in (tmp_path / "set").iterdir()}
    assert cli(["data", "prepare", *args, "--out", str(tmp_path / "set")]) == 2
    assert "already holds a prepared set" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "set").iterdir()} == before


@pytest.mark.slow
def test_training_from_a_prepared_set_gives_the_in_memory_losses_and_resumes_bitwise(tmp_path, data_root):
    from huginn_db.tokenizer import train_sentencepiece

    (tmp_path / "ts.txt").write_text((data_root / "tinystories" / "tinystories_val.txt").read_text()[:200_000])
    tok = train_sentencepiece([str(tmp_path / "ts.txt")], 500, str(tmp_path / "tok"))
    common = [
        f"data.text.files=[{tmp_path / 'ts.txt'}]",
        f"data.text.tokenizer={tok}",
        "data.text.seq_len=32",
        *TINY_TEXT_RUN,
    ]
    recipe = str(RECIPES / "text-small-db.yaml")
    assert cli(["data", "prepare", recipe, *common, "--out", str(tmp_path / "set"), "--num-proc", "2"]) == 0

    def train(run, *extra):
        cmd = [sys.executable, "-m", "huginn_db.cli", "train", recipe, f"run_dir={tmp_path / run}", *common, *extra]
        proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [r["loss"] for r in metrics(tmp_path / run) if "loss" in r]

    prepared = f"data.text.prepared={tmp_path / 'set'}"
    mem = train("mem", "train.max_steps=6")
    assert train("prep", prepared, "train.max_steps=6") == mem
    # the local lm-eval text tasks score what each run held out: the same documents, not re-read
    sys.path.insert(0, str(RECIPES.parent / "eval" / "tasks"))
    from utils import held_out

    assert held_out(str(tmp_path / "ts.txt"), str(tmp_path / "prep")) == held_out(
        str(tmp_path / "ts.txt"), str(tmp_path / "mem")
    )
    train("resumed", prepared, "train.max_steps=3", "train.save_every=3")
    # within the warm-up the 3-step run's lrs are the 6-step run's: extending it is allowed
    assert train("resumed", prepared, "train.max_steps=6", "train.extend_ok=true", "resume=auto") == mem


def test_loader_workers_build_the_same_micro_batches_in_order(tmp_path):
    from huginn_db.components.loader import micro_batch_loader
    from huginn_db.config import TrainConfig

    text = _text(tmp_path)
    P.prepare(text, 0, tmp_path / "set", progress=False)
    corpus = TextCorpus(TextConfig(**{**vars(text), "prepared": str(tmp_path / "set")}), 0)
    train = TrainConfig(max_steps=5, micro_batch_size=3, grad_accum=2)
    got = list(micro_batch_loader(corpus, train, rank=1, world=2, start_step=2, workers=2, pin=False))
    assert [b["micro_batch"] for b in got] == list(range(4, 10))
    for b in got:
        step, micro = divmod(b["micro_batch"], 2)
        assert torch.equal(b["input_ids"], corpus.train_batch(3, step, micro, 1, 2, 2)["input_ids"])


def test_a_run_on_a_mismatched_prepared_set_exits_2_before_touching_its_run_dir(tmp_path, spm_tok):
    text = _text(tmp_path)
    P.prepare(text, 0, tmp_path / "set", progress=False)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "huginn_db.cli", "train", str(RECIPES / "text-small-db.yaml"), f"run_dir={run}"]
    cmd += [
        f"data.text.files=[{text.files[0]}]",
        f"data.text.prepared={tmp_path / 'set'}",
        "data.text.val_fraction=0.1",
    ]
    cmd += [f"data.text.tokenizer={spm_tok.model_path}", "data.text.split_seed=0", "data.text.seq_len=9"]
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and not run.exists()
    errors = [line for line in proc.stderr.splitlines() if line.startswith("huginn-db: error:")]
    assert len(errors) == 1 and "was tokenized with reasoning" in errors[0]
