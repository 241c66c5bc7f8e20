"""End-to-end: the real CLI, a real DeepSpeed engine, a run directory, evaluation at several depths."""

import json
import subprocess
import sys

import pytest
import torch

from huginn_db.checkpoint import load_run
from huginn_db.data.reasoning import ReasoningCorpus
from huginn_db.evaluate import reasoning_accuracy
from tests.conftest import RECIPES

pytestmark = pytest.mark.slow

SMALL = [
    "train.max_steps=60",
    "train.micro_batch_size=32",
    "train.warmup_steps=5",
    "train.log_every=5",
    "model.hidden=64",
    "model.mlp_hidden=128",
    "data.reasoning.test_examples=20",
    "data.reasoning.test_difficulties=[1,2]",
    "eval.num_steps=[1,2,4]",
    "objective.bptt.mean_recurrence=4",
    "eval.every=30",
    "eval.every_examples=5",
    "train.peak_flops=1e11",
]


@pytest.mark.parametrize("objective", ["db", "bptt"])
def test_training_lowers_loss_and_model_evaluates_at_several_depths(objective, tmp_path):
    run = tmp_path / objective
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "huginn_db.cli",
            "train",
            str(RECIPES / f"demo-{objective}.yaml"),
            f"run_dir={run}",
            *SMALL,
            # BPTT: the in-training evaluation at chosen depths and difficulties
            *(["eval.every_num_steps=[1,4]", "eval.every_difficulties=[2]"] if objective == "bptt" else []),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "d1" in proc.stdout  # the accuracy table is printed

    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in records if "loss" in r]
    assert [r["step"] for r in rows] == list(range(5, 61, 5))
    # in-training evaluation (eval.every=30): DB at its default depth and every test difficulty
    evals = [r for r in records if "accuracy" in r]
    assert [r["step"] for r in evals] == [30]
    if objective == "db":
        assert set(evals[0]["accuracy"]) == {"8"} and {"d1", "d2"} <= set(evals[0]["accuracy"]["8"])
    else:
        assert set(evals[0]["accuracy"]) == {"1", "4"} and "d1" not in evals[0]["accuracy"]["4"]
        assert "d2" in evals[0]["accuracy"]["4"]
    # the training FLOPs so far: those of the step-30 training record
    assert evals[0]["flops"] == next(r["flops"] for r in rows if r["step"] == 30)
    assert rows[-1]["tokens"] == 60 * 32 * rows[0]["tokens"] // (5 * 32)
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"], [r["loss"] for r in rows]
    assert all(0 < r["mfu"] < 2 and r["tokens_per_s"] > 0 and r["flops"] > 0 for r in rows)
    assert all(b["flops"] > a["flops"] for a, b in zip(rows, rows[1:]))
    stat = "r" if objective == "bptt" else "sigma_mean"
    assert all(stat in r for r in rows)
    assert (run / "config.yaml").is_file() and (run / "tokenizer.json").is_file()
    # where it trained: the CPU, the threads, the versions and the commit of this checkout
    from huginn_db import machine

    (m,) = json.loads((run / "machine.json").read_text())
    assert m["from_step"] == 0 and m["cpu"] == machine.cpu_model() and m["gpu"] is None and m["world"] == 1
    assert m["torch"] == torch.__version__ and m["deepspeed"] and m["threads"] >= 1
    assert m["commit"] is None or m["commit"].split("+")[0] == machine.commit().split("+")[0]

    final = json.loads((run / "eval" / "final.json").read_text())
    assert set(final["accuracy"]) == {"1", "2", "4"}

    # reload from the DeepSpeed checkpoint and evaluate at other depths without DeepSpeed
    cfg, model, obj = load_run(run)
    corpus = ReasoningCorpus(cfg.data.reasoning, cfg.seed)
    acc = reasoning_accuracy(obj, model, corpus, [1, 3, 8], seed=cfg.seed)
    assert set(acc) == {"1", "3", "8"} and all(0.0 <= a["mean"] <= 1.0 for a in acc.values())
    # the same depth gives the same score as the trainer's own evaluation (deterministic)
    assert reasoning_accuracy(obj, model, corpus, [2], seed=cfg.seed)["2"] == final["accuracy"]["2"]


def test_existing_run_dir_is_not_overwritten(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "huginn_db.cli", "train", str(RECIPES / "demo-db.yaml"), f"run_dir={run}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "already holds a run" in proc.stderr
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'


@pytest.mark.parametrize("objective", ["db", "bptt"])
def test_text_recipe_trains_on_local_text(objective, tmp_path, data_root):
    from huginn_db.tokenizer import train_sentencepiece

    text = (data_root / "tinystories" / "tinystories_val.txt").read_text()[:300_000]
    (tmp_path / "ts.txt").write_text(text)
    tok = train_sentencepiece([str(tmp_path / "ts.txt")], 1000, str(tmp_path / "tok"))
    run = tmp_path / objective
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "huginn_db.cli",
            "train",
            str(RECIPES / f"text-small-{objective}.yaml"),
            f"run_dir={run}",
            f"data.text.data_root={data_root}",
            f"data.text.tokenizer={tok}",
            "train.max_steps=30",
            "train.micro_batch_size=8",
            "train.warmup_steps=3",
            "train.log_every=5",
            "model.hidden=64",
            "model.mlp_hidden=128",
            "data.text.seq_len=64",
            "eval.num_steps=[1,2]",
            "eval.max_val_batches=2",
            "objective.bptt.mean_recurrence=3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5  # from ~ln(1000)=6.9 nats towards unigram
    final = json.loads((run / "eval" / "final.json").read_text())
    assert set(final["validation"]) == {"1", "2"}
    assert all(v["loss"] < 7.5 for v in final["validation"].values())
    assert (run / "tokenizer.model").is_file() and rows[-1]["tokens"] == 30 * 8 * 64


def test_paper_and_huginn_recipes_load_and_report_parameters():
    from huginn_db.config import load_config
    from huginn_db.model import RecurrentDepthLM

    for name, low, high in [("paper-lm1b", 48e6, 56e6), ("huginn-3.5b", 3.4e9, 3.7e9)]:
        for obj in ("db", "bptt"):
            cfg = load_config(RECIPES / f"{name}-{obj}.yaml")
            cfg.model.sigma_conditioning = obj == "db"
            with torch.device("meta"):
                n = RecurrentDepthLM(cfg.model).num_parameters()["total"]
            assert low < n < high, (name, obj, n)
