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

SMALL = ["train.max_steps=60", "train.micro_batch_size=32", "train.warmup_steps=5", "train.log_every=5",
         "model.hidden=64", "model.mlp_hidden=128", "data.reasoning.test_examples=20",
         "data.reasoning.test_difficulties=[1,2]", "eval.num_steps=[1,2,4]", "objective.bptt.mean_recurrence=4"]


@pytest.mark.parametrize("objective", ["db", "bptt"])
def test_training_lowers_loss_and_model_evaluates_at_several_depths(objective, tmp_path):
    run = tmp_path / objective
    proc = subprocess.run(
        [sys.executable, "-m", "huginn_db.cli", "train", str(RECIPES / f"demo-{objective}.yaml"), f"run_dir={run}", *SMALL],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "d1" in proc.stdout  # the accuracy table is printed

    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(5, 61, 5))
    assert rows[-1]["tokens"] == 60 * 32 * rows[0]["tokens"] // (5 * 32)
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"], [r["loss"] for r in rows]
    stat = "r" if objective == "bptt" else "sigma_mean"
    assert all(stat in r for r in rows)
    assert (run / "config.yaml").is_file() and (run / "tokenizer.json").is_file()

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
    proc = subprocess.run([sys.executable, "-m", "huginn_db.cli", "train", str(RECIPES / "demo-db.yaml"), f"run_dir={run}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "already holds a run" in proc.stderr
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'
