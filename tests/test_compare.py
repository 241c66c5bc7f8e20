"""The main job end to end on a tiny budget: compare (step- and compute-matched), report, eval CLI."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RECIPES

pytestmark = pytest.mark.slow

TINY = [
    "train.micro_batch_size=16",
    "train.warmup_steps=2",
    "train.log_every=5",
    "train.threads=1",
    "model.hidden=64",
    "model.mlp_hidden=128",
    "objective.bptt.mean_recurrence=4",
    "objective.diffusion_blocks.num_bands=4",
    "data.reasoning.test_difficulties=[2,7,8]",
]


def run(*args, timeout=900):
    proc = subprocess.run(
        [sys.executable, "-m", "huginn_db.cli", *args], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc.stdout


def test_compare_compute_matched_then_report_rebuild(tmp_path):
    out = tmp_path / "cmp"
    args = [
        "compare",
        str(RECIPES / "demo-db.yaml"),
        "--mode",
        "compute",
        "--num-steps",
        "1,2",
        "--limit",
        "4",
        "--out",
        str(out),
        "--objectives",
        "bptt",
        "diffusion_blocks",
        "diffusion_blocks:self_condition=latent",  # a variant: its own runs and label
        "--exit",
        "kl:0,entropy:1e9",  # never / always met: the frontier's two ends
        "train.max_steps=10",
        *TINY,
    ]
    stdout = run(*args)
    assert "Training cost" in stdout and "Depth benchmark: `cups` family" in stdout and "Shortcut audit" in stdout
    report = (out / "report.md").read_text()
    for png in ("loss_vs_flops.png", "depth_per_difficulty.png", "test_time_scaling.png"):
        assert (out / png).stat().st_size > 1000 and png in report
    # compute-matched: same FLOP budget, so the cheaper DB step gets more steps
    db = [json.loads(l) for l in (out / "db-seed0" / "metrics.jsonl").read_text().splitlines()]
    bptt = [json.loads(l) for l in (out / "bptt-seed0" / "metrics.jsonl").read_text().splitlines()]
    assert db[-1]["step"] > bptt[-1]["step"] == 10
    assert db[-1]["flops"] == pytest.approx(bptt[-1]["flops"], rel=0.35)  # BPTT's r is random per step
    ratio = float(re.search(r"Training FLOPs relative to (DB|BPTT): (BPTT|DB) \*\*([\d.]+)×", report).group(3))
    assert 0.6 < ratio < 1.6
    for r in ("db-seed0", "bptt-seed0"):
        scores = json.loads((out / r / "eval" / "lm_eval.json").read_text())["scores"]
        # the recipe's own benchmark by default: one task per test difficulty
        assert set(scores) == {"1", "2"} and set(scores["2"]) == {f"reasoning_cups_d{d}" for d in (2, 7, 8)}
        assert 0.0 <= scores["2"]["reasoning_cups_d2"]["exact_match,none"] <= 1.0
    assert re.search(r"\| d7 ‡ \| [\d.]+ \| [\d.]+ \|", report) and "| BPTT | d8 | 1 → 2 |" in report
    variant = out / "db-self_condition-latent-seed0"
    assert "| DB self_condition=latent | d8 | 1 → 2 |" in report
    assert json.loads((variant / "eval" / "lm_eval.json").read_text())["scores"]["1"]
    sc = [json.loads(l) for l in (variant / "metrics.jsonl").read_text().splitlines()]
    assert bptt[-1]["step"] < sc[-1]["step"] < db[-1]["step"]  # its first passes cost FLOPs
    # adaptive exit up to K=2: kl:0 runs both iterations and scores as fixed K=2, entropy:1e9 one
    assert "## Adaptive exit: accuracy vs mean iterations used" in report
    for r, label in (("db-seed0", "DB"), ("bptt-seed0", "BPTT")):
        exits = json.loads((out / r / "eval" / "lm_eval_exit.json").read_text())
        fixed = json.loads((out / r / "eval" / "lm_eval.json").read_text())["scores"]["2"]
        assert exits["max_steps"] == 2 and exits["rules"]["kl:0"]["scores"] == fixed
        assert (
            exits["rules"]["kl:0"]["mean_iterations"] == 2 and exits["rules"]["entropy:1e+09"]["mean_iterations"] == 1
        )
        assert f"| {label} | exit entropy:1e+09 | 1.00 |" in report and f"| {label} | exit kl:0 | 2.00 |" in report

    runs = [str(out / r) for r in ("bptt-seed0", "db-seed0", variant.name)]
    (out / "report.md").unlink()
    run("report", *runs, "--out", str(out))
    assert (out / "report.md").read_text() == report
    # the same command with --skip-done keeps every finished run
    before = {r: (Path(r) / "metrics.jsonl").stat().st_mtime_ns for r in runs}
    again = run(*args, "--skip-done")
    assert again.count("done (same config and scores), kept") == 3
    assert {r: (Path(r) / "metrics.jsonl").stat().st_mtime_ns for r in runs} == before
    assert (out / "report.md").read_text() == report


def test_compare_on_text_reports_held_out_loss_and_samples_per_depth(tmp_path, data_root):
    """A text recipe's comparison keeps the trainer's held-out loss at every test-time depth,
    scores samples at every depth with one judge LM trained for the study, and tabulates both
    per objective (lm-eval's tinystories_local scores the runs as well); a rerun keeps both."""
    from huginn_db.tokenizer import train_sentencepiece

    (tmp_path / "ts.txt").write_text((data_root / "tinystories" / "tinystories_val.txt").read_text()[:200_000])
    tok = train_sentencepiece([str(tmp_path / "ts.txt")], 500, str(tmp_path / "tok"))
    out = tmp_path / "cmp"
    args = [
        "compare",
        str(RECIPES / "text-small-db.yaml"),
        *"--judge-steps 5 --prompts 6 --per-prompt 2 --prompt-tokens 8 --new-tokens 8".split(),
        "--num-steps",
        "1,2",
        "--limit",
        "2",
        "--out",
        str(out),
        "--objectives",
        "bptt",
        "diffusion_blocks",
        f"data.text.data_root={data_root}",
        f"data.text.tokenizer={tok}",
        "model.vocab_size=500",
        "train.max_steps=3",
        "train.micro_batch_size=4",
        "train.threads=1",
        "model.hidden=32",
        "model.mlp_hidden=64",
        "data.text.seq_len=32",
        "model.context=32",
        "eval.max_val_batches=2",
        "objective.bptt.mean_recurrence=2",
    ]
    run(*args)
    report = (out / "report.md").read_text()
    assert "## Held-out text: validation loss vs test-time iterations" in report
    assert "## Samples: MAUVE, generative perplexity and entropy vs test-time iterations" in report
    assert f"judge LM `{out / 'judge'}`" in report and (out / "samples_vs_iterations.png").stat().st_size > 1000
    judge = json.loads((out / "judge" / "judge.json").read_text())
    assert judge["excluded_documents"] > 0 and judge["steps"] == 5
    assert (out / "validation_vs_iterations.png").stat().st_size > 1000
    for name, label in (("bptt-seed0", "BPTT"), ("db-seed0", "DB")):
        val = json.loads((out / name / "eval" / "final.json").read_text())["validation"]
        assert set(val) == {"1", "2"}
        row = f"| {label} | 1 | {val['1']['loss']:.3f} | {val['2']['loss']:.3f} |"
        assert row in report, (row, report)
        scores = json.loads((out / name / "eval" / "lm_eval.json").read_text())["scores"]
        assert set(scores["2"]) == {"tinystories_local"}
        quality = json.loads((out / name / "eval" / "text_quality.json").read_text())
        assert set(quality["scores"]) == {"1", "2"} and quality["protocol"]["prompts"] == 6
        for K in ("1", "2"):
            q = quality["scores"][K]
            assert q["samples"] == 12 and 0 < q["mauve"] <= 1 and q["gen_ppl"] > 1
            assert f"| {label} | {K} | {q['mauve']:.3f} | {q['mauve_c5']:.3f} | {q['gen_ppl']:.1f} |" in report
        assert len((out / name / "eval" / "samples_K2.jsonl").read_text().splitlines()) == 6
    # a rerun keeps the runs, the judge and the scored samples
    stamp = (out / "judge" / "judge.json").stat().st_mtime_ns
    again = run(*args, "--skip-done")
    assert again.count("done (same config and scores), kept") == 2 and again.count("(same protocol), kept") == 2
    assert (out / "judge" / "judge.json").stat().st_mtime_ns == stamp


def test_eval_cli_sweeps_depths(tmp_path):
    train_dir = tmp_path / "run"
    run(
        "train",
        str(RECIPES / "demo-bptt.yaml"),
        f"run_dir={train_dir}",
        "train.max_steps=5",
        "eval.num_steps=[]",
        *TINY,
    )
    stdout = run("eval", str(train_dir), "--num-steps", "1,3", "--limit", "3")  # default: its own benchmark
    assert "reasoning_cups_d8" in stdout
    for K in (1, 3):
        res = json.loads((train_dir / "eval" / f"lm_eval_K{K}.json").read_text())
        assert set(res["results"]) == {"reasoning_cups_d2", "reasoning_cups_d7", "reasoning_cups_d8"}
        assert "exact_match,none" in res["results"]["reasoning_cups_d8"]
    proc = subprocess.run(
        [sys.executable, "-m", "huginn_db.cli", "eval", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "not a run or export directory" in proc.stderr
