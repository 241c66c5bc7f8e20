"""The report's depth benchmark section, from hand-made run directories (no training)."""

import json
import platform
import re
from pathlib import Path

import pytest
import yaml

from huginn_db.config import RunConfig, to_dict
from huginn_db.report import depth_matrix, depth_summary, write_report


def _run(root, objective: str, seed: int, acc: dict, family: str = "modsum", trained=(1, 2, 3)):
    """A run directory as compare leaves it; acc: {difficulty: {K: exact match}}."""
    run = root / f"{objective}-seed{seed}"
    (run / "eval").mkdir(parents=True)
    cfg = RunConfig(seed=seed)
    cfg.objective.name = objective
    cfg.data.reasoning.family = family
    cfg.data.reasoning.train_difficulties = list(trained)
    cfg.data.reasoning.test_difficulties = sorted(acc)
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    rows = [
        {
            "step": s,
            "loss": 2.0 / s,
            "tokens": 100 * s,
            "flops": 1e9 * s * (3 if objective == "bptt" else 1),
            "seconds": 0.1,
            "elapsed": 0.1 * s,
            "peak_memory_bytes": 2**20,
        }
        for s in (10, 20)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = {
        str(K): {
            f"reasoning_{family}_d{d}": {"exact_match,none": row[K], "exact_match_stderr,none": 0.01}
            for d, row in acc.items()
        }
        for K in next(iter(acc.values()))
    }
    (run / "eval" / "lm_eval.json").write_text(json.dumps({"tasks": [], "scores": scores}))
    return run


def _acc(base: float, slope: float) -> dict:
    """Accuracy that falls with difficulty and, for slope > 0, rises with K."""
    return {d: {K: min(1.0, max(0.0, base - 0.1 * d + slope * K)) for K in (1, 2, 4, 16)} for d in (1, 2, 3, 4, 5)}


def test_depth_matrix_and_gain(tmp_path):
    run = {
        "scores": json.loads(_run(tmp_path, "bptt", 0, _acc(0.5, 0.02)).joinpath("eval/lm_eval.json").read_text())[
            "scores"
        ],
        "cfg": {"data": {"reasoning": {"train_difficulties": [1, 2, 3]}}},
    }
    mat = depth_matrix(run)
    assert sorted(mat) == [1, 2, 3, 4, 5] and sorted(mat[4]) == [1, 2, 4, 16]
    s = depth_summary(run)
    assert s["unseen"] == 4 and (s["k_lo"], s["k_hi"]) == (1, 16)
    assert s["gain"] == pytest.approx(mat[4][16] - mat[4][1]) and s["gain"] == pytest.approx(0.3)
    assert s["scaling"] == pytest.approx(mat[3][16] - mat[3][1])


def test_report_shows_matrices_gain_per_seed_and_the_audit(tmp_path):
    runs = [_run(tmp_path, "bptt", s, _acc(0.5 + 0.01 * s, 0.02)) for s in (0, 1, 2)]
    runs += [_run(tmp_path, "diffusion_blocks", s, _acc(0.6, 0.0)) for s in (0, 1, 2)]
    text = write_report(runs, tmp_path).read_text()
    assert "## Depth benchmark: `modsum` family" in text
    # a difficulty × K matrix per objective, trained rows marked, mean ± std over the 3 seeds
    assert "**BPTT** (3 seeds)" in text and "**DB** (3 seeds)" in text
    assert re.search(r"\| d3 ‡ \| [\d.]+ ± [\d.]+ \|", text) and re.search(r"\| d4 \| ", text)
    row = re.search(r"\| BPTT \| d4 \| 1 → 16 \| (.*?) \|\n", text).group(1).split(" | ")
    assert row[2] == "**+0.300 ± 0.000**" and row[3] == "+0.300, +0.300, +0.300"
    db = re.search(r"\| DB \| d4 \| 1 → 16 \| (.*?) \|\n", text).group(1).split(" | ")
    assert db[2] == "**+0.000 ± 0.000**"
    assert "### Shortcut audit" in text and "| d5 | 2000 | 0.200 |" in text and "FAIL" not in text
    for png in ("depth_per_difficulty.png", "test_time_scaling.png", "loss_vs_flops.png"):
        assert (tmp_path / png).stat().st_size > 1000 and png in text


def test_report_names_the_machines_and_the_commit(tmp_path):
    from huginn_db import machine

    runs = [_run(tmp_path, "bptt", s, _acc(0.5, 0.02)) for s in (0, 1)]
    here = machine.describe()
    machine.record(runs[0], {**here, "from_step": 0})
    machine.record(runs[0], {**here, "from_step": 40, "threads": 7})  # resumed elsewhere
    machine.record(runs[0], {**here, "from_step": 40, "threads": 9})  # that start, restarted
    assert [m["threads"] for m in json.loads((runs[0] / "machine.json").read_text())] == [here["threads"], 9]
    text = write_report(runs, tmp_path).read_text()
    assert text.index("## Machine") < text.index("## Training cost")
    assert f"- {machine.label(here)}: 1 run(s)" in text and "9 thread(s) × 1 rank(s)" in text
    assert here["cpu"] in text and "rounding" in text and here["date"][:10] in text
    assert (here["commit"] or "not a git checkout")[:12] in text


def test_machine_record_outside_a_checkout_without_proc_and_on_a_gpu(tmp_path, monkeypatch):
    """An installed wheel has no commit, a machine without /proc/cpuinfo names its CPU by the
    platform, a missing library is None, and a CUDA device is named by its GPU."""
    import subprocess

    import torch

    from huginn_db import machine

    monkeypatch.setattr(machine, "REPO", tmp_path)  # not a git checkout
    assert machine.commit() is None

    def no_git(*a, **k):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert machine.commit() is None
    monkeypatch.setattr(machine, "Path", lambda p: tmp_path / "no-proc" / Path(p).name)
    assert machine.cpu_model() == (platform.processor() or platform.machine() or "unknown CPU")
    assert machine._version("no-such-distribution") is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100 80GB HBM3")
    m = machine.describe(torch.device("cuda", 0), world=8, step=40)
    assert m["gpu"] == "NVIDIA H100 80GB HBM3" and m["commit"] is None and (m["world"], m["from_step"]) == (8, 40)
    assert machine.label(m).startswith("NVIDIA H100 80GB HBM3 (host CPU ")


def test_benchmark_table_marks_tasks_whose_scores_are_not_stock(tmp_path):
    runs = [_run(tmp_path, o, 0, _acc(0.5, 0.0)) for o in ("bptt", "diffusion_blocks")]
    for run in runs:
        path = run / "eval" / "lm_eval.json"
        ev = json.loads(path.read_text())
        for K in ev["scores"]:
            ev["scores"][K].update({"wikitext2_local": {"word_perplexity,none": 90.0}, "piqa_local": {"acc,none": 0.6}})
        path.write_text(json.dumps(ev))
    text = write_report(runs, tmp_path).read_text()
    assert "| wikitext2_local † | word_perplexity | 1 |" in text and "| piqa_local | acc | 1 |" in text
    note = re.search(r"- `wikitext2_local`: (.*)\n", text).group(1)
    assert "not comparable to lm-eval wikitext" in note and "`piqa_local`" not in text


def _with_evals(run, points: list[tuple[int, float]], K: int = 16, difficulty: int = 4):
    """Append in-training evaluations {step, flops, accuracy} to a hand-made run."""
    flops_per_step = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["flops"] / 10
    with (run / "metrics.jsonl").open("a") as f:
        for step, acc in points:
            accuracy = {str(K): {f"d{difficulty}": acc, "d3": min(1.0, acc + 0.1)}}
            f.write(json.dumps({"step": step, "flops": flops_per_step * step, "accuracy": accuracy}) + "\n")
    return run


def test_flops_to_target_is_the_first_evaluation_at_the_target(tmp_path):
    # BPTT (3e9 FLOPs/step) reaches 0.9 at step 5 or 10 depending on the seed; DB (1e9/step)
    # reaches it at step 15 on one seed and never on the other (its final lm-eval score, 0.6, counts)
    bptt = [
        _with_evals(_run(tmp_path, "bptt", s, _acc(0.5, 0.02)), [(5, 0.95 if s else 0.5), (10, 0.92), (15, 0.85)])
        for s in (0, 1)
    ]
    db = [
        _with_evals(_run(tmp_path, "diffusion_blocks", s, _acc(0.6, 0.0)), [(5, 0.4), (15, 0.9 if s else 0.7)])
        for s in (0, 1)
    ]
    text = write_report(bptt + db, tmp_path).read_text()
    assert "## Training FLOPs to reach 0.9 at d4 (first unseen), K = 16" in text
    row = re.search(r"\| BPTT \| (.*?) \|\n", text.split("FLOPs to reach")[1]).group(1).split(" | ")
    assert row[:4] == ["2/2", "3.00e+10, 1.50e+10", "2.25e+10 ± 1.06e+10", "1.00"]
    row = re.search(r"\| DB \| (.*?) \|\n", text.split("FLOPs to reach")[1]).group(1).split(" | ")
    assert row[:4] == ["1/2", "not reached, 1.50e+10", "1.50e+10", "0.67"]
    # the final point is the run's lm-eval score of the same cell (d4, K = 16: 0.6 − 0.4 + 0 for DB)
    assert row[5] == "0.200 ± 0.000"
    assert (tmp_path / "accuracy_vs_flops.png").stat().st_size > 1000


def test_no_target_section_without_in_training_evaluations(tmp_path):
    runs = [_run(tmp_path, o, 0, _acc(0.5, 0.0)) for o in ("bptt", "diffusion_blocks")]
    text = write_report(runs, tmp_path).read_text()
    assert "FLOPs to reach" not in text and not (tmp_path / "accuracy_vs_flops.png").exists()
