"""DiffusionBlocks vs truncated BPTT on the same model and data: train both, evaluate both with
lm-eval at several test-time depths, and write a report of what each cost and what each scored.

    huginn-db compare RECIPE.yaml [--mode step|compute] [--seeds 0 1] [--num-steps 1,2,4,8]
                      [--tasks T,...] [--limit N] [--out DIR] [dotted.key=value ...]
    huginn-db report RUN_DIR [RUN_DIR ...] [--out DIR]

`step` mode trains both variants for the recipe's train.max_steps. `compute` mode gives both
the same training-FLOP budget: the BPTT variant's expected FLOPs at train.max_steps (or
--flops), with each variant's steps = budget / its analytic FLOPs per step.
Each run directory keeps its metrics.jsonl and eval/lm_eval.json, so `report` can rebuild
report.md and the plots from run directories alone.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from huginn_db.config import ConfigError, load_config

OBJECTIVES = ("diffusion_blocks", "bptt")
SHORT = {"diffusion_blocks": "DB", "bptt": "BPTT"}


def default_tasks(data_name: str) -> list[str]:
    return ["reasoning_chain"] if data_name == "reasoning" else ["tinystories_local"]


def _train(recipe: str, run: Path, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "huginn_db.train", recipe, f"run_dir={run}", "overwrite=true", *overrides]
    print("==", " ".join(cmd[2:]), flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    subprocess.run(cmd, check=True, env=env)


def steps_for_budget(recipe: str, overrides: list[str], budget: float | None) -> tuple[dict[str, int], float]:
    """Steps per objective so that both spend the same analytic training FLOPs."""
    from huginn_db.compute import train_flops
    from huginn_db.train import build_corpus

    per_step = {}
    for obj in OBJECTIVES:
        cfg = load_config(recipe, [*overrides, f"objective.name={obj}"])
        T = build_corpus(cfg).train_seq_len
        B = cfg.train.micro_batch_size * cfg.train.grad_accum  # per rank; the ratio is what matters
        per_step[obj] = train_flops(cfg.model, cfg.objective_config(), B, T)["total"]  # E over r for BPTT
    if budget is None:
        base = load_config(recipe, overrides)
        budget = per_step["bptt"] * base.train.max_steps
    return {obj: max(1, round(budget / f)) for obj, f in per_step.items()}, budget


def compare(recipe: str, mode: str, seeds: list[int], num_steps: list[int], tasks: list[str] | None,
            limit: int | None, out: Path, overrides: list[str], budget: float | None = None) -> Path:
    base = load_config(recipe, overrides)
    tasks = tasks or default_tasks(base.data.name)
    steps = {obj: base.train.max_steps for obj in OBJECTIVES}
    if mode == "compute":
        steps, budget = steps_for_budget(recipe, overrides, budget)
        print(f"compute-matched budget {budget:.3e} FLOPs: steps {steps}", flush=True)
    runs = []
    for seed in seeds:
        for obj in OBJECTIVES:
            run = out / f"{SHORT[obj].lower()}-seed{seed}"
            # the trainer's own end-of-run accuracy is skipped: lm-eval scores the runs below
            _train(recipe, run, [*overrides, f"objective.name={obj}", f"seed={seed}",
                                 f"train.max_steps={steps[obj]}", "eval.num_steps=[]"])
            evaluate_run(run, tasks, num_steps, limit, seed)
            runs.append(run)
    return write_report(runs, out)


def evaluate_run(run: Path, tasks: list[str], num_steps: list[int], limit: int | None, seed: int) -> dict:
    """lm-eval at each depth; eval/lm_eval.json holds {K: {task: {metric: value}}}."""
    from huginn_db.lm_eval import evaluate

    results = evaluate(str(run), tasks, num_steps, limit=limit, model_args={"seed": seed})
    scores = {str(K): {t: {m: v for m, v in r.items() if isinstance(v, (int, float)) and not m.endswith("_stderr,none")}
                       for t, r in res["results"].items()} for K, res in results.items()}
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / "lm_eval.json").write_text(json.dumps({"tasks": tasks, "scores": scores}, indent=2))
    return scores


# --- report -------------------------------------------------------------------------------------

def _load(run: Path) -> dict:
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    ev = run / "eval" / "lm_eval.json"
    return {"run": run, "objective": cfg["objective"]["name"], "seed": cfg["seed"], "cfg": cfg,
            "train": [r for r in rows if "loss" in r],
            "evals": [r for r in rows if "loss" not in r],
            "scores": json.loads(ev.read_text())["scores"] if ev.is_file() else {}}


def _fmt(xs: list[float], spec: str = ".3f") -> str:
    if not xs:
        return "–"
    if len(xs) == 1:
        return format(xs[0], spec)
    return f"{format(statistics.mean(xs), spec)} ± {format(statistics.stdev(xs), spec)}"


def _headline_metric(task_scores: dict) -> tuple[str, float] | None:
    for m in ("exact_match,none", "acc,none", "acc_norm,none", "word_perplexity,none", "bits_per_byte,none"):
        if m in task_scores:
            return m.split(",")[0], task_scores[m]
    return None


def write_report(runs: list[Path], out: Path) -> Path:
    data = [_load(Path(r)) for r in runs]
    out.mkdir(parents=True, exist_ok=True)
    by_obj = {o: [d for d in data if d["objective"] == o] for o in OBJECTIVES}
    # equal step counts: step-matched; otherwise the steps were set from a FLOP budget
    mode = "step" if len({d["train"][-1]["step"] for d in data if d["train"]}) == 1 else "compute"
    lines = [f"# DiffusionBlocks vs truncated BPTT ({mode}-matched)", ""]
    lines += ["## Training cost", "",
              "| | steps | tokens | train FLOPs | FLOPs/step | wall time (s) | s/step (median) | tokens/s | peak mem (MiB) | final loss |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for o, ds in by_obj.items():
        if not ds:
            continue
        last = [d["train"][-1] for d in ds]
        s_step = [statistics.median(r["seconds"] for r in d["train"][min(2, len(d["train"]) - 1):]) for d in ds]
        lines.append("| " + " | ".join([
            SHORT[o], _fmt([r["step"] for r in last], ".0f"), _fmt([r["tokens"] for r in last], ".0f"),
            _fmt([r.get("flops", float("nan")) for r in last], ".3e"),
            _fmt([r.get("flops", float("nan")) / r["step"] for r in last], ".3e"),
            _fmt([r["elapsed"] for r in last], ".1f"), _fmt(s_step, ".3f"),
            _fmt([r["tokens"] / r["elapsed"] for r in last], ".0f"),
            _fmt([r.get("peak_memory_bytes", float("nan")) / 2**20 for r in last], ".0f"),
            _fmt([r["loss"] for r in last], ".4f")]) + " |")
    if all(by_obj.values()):
        f = {o: statistics.mean(d["train"][-1].get("flops", float("nan")) for d in ds) for o, ds in by_obj.items()}
        lines += ["", f"Training FLOPs BPTT/DB: **{f['bptt'] / f['diffusion_blocks']:.2f}×**."]

    Ks = sorted({K for d in data for K in d["scores"]}, key=int)
    tasks = sorted({t for d in data for K in d["scores"] for t in d["scores"][K]})
    if Ks:
        lines += ["", "## Benchmark scores (lm-eval)", "",
                  "Depth K = loop iterations at test time (r for BPTT, Euler steps over K σ-bands for DB). "
                  "Generation tasks use the K-step loop for both; DB log-likelihoods are the "
                  "denoiser's context-only (σ_max) prediction.", "",
                  "| task | metric | K | DB | BPTT |", "|---|---|---|---|---|"]
        for t in tasks:
            for K in Ks:
                cells, metric = [], None
                for o in OBJECTIVES:
                    hms = [hm for d in by_obj[o] if (hm := _headline_metric(d["scores"].get(K, {}).get(t, {})))]
                    metric = metric or (hms[0][0] if hms else None)
                    cells.append(_fmt([v for _, v in hms]))
                if metric:
                    lines.append(f"| {t} | {metric} | {K} | {cells[0]} | {cells[1]} |")
    plots = _plots(data, by_obj, Ks, tasks, out)
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "Runs: " + ", ".join(f"`{d['run']}`" for d in data), ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def _mean_score(ds: list[dict], K: str, task: str) -> float:
    vals = [hm[1] for d in ds if (hm := _headline_metric(d["scores"].get(K, {}).get(task, {})))]
    return statistics.mean(vals) if vals else float("nan")


def _plots(data, by_obj, Ks, tasks, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"diffusion_blocks": "tab:blue", "bptt": "tab:orange"}
    paths = []

    def save(fig, ax, name, title, xlabel, ylabel):
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)

    fig, ax = plt.subplots(figsize=(6, 4))
    for o, ds in by_obj.items():
        for i, d in enumerate(ds):
            ax.plot([r["flops"] for r in d["train"]], [r["loss"] for r in d["train"]], color=colors[o],
                    alpha=0.8, label=SHORT[o] if i == 0 else None)
    ax.set_yscale("log")
    save(fig, ax, "loss_vs_flops.png", "Loss vs training compute", "training FLOPs (analytic)", "training loss")

    # the headline task: a group (reasoning_chain) rather than one difficulty, when present
    headline = [t for t in tasks if not re.fullmatch(r".*_d\d+", t)] or tasks
    if Ks and headline:
        fig, ax = plt.subplots(figsize=(6, 4))
        for o, ds in by_obj.items():
            ax.plot([int(K) for K in Ks], [_mean_score(ds, K, headline[0]) for K in Ks], marker="o",
                    color=colors[o], label=SHORT[o])
        ax.set_xscale("log", base=2)
        save(fig, ax, "score_vs_iterations.png", "Score vs test-time iterations", "test-time iterations K", headline[0])

    per_d = sorted((t for t in tasks if re.fullmatch(r".*_d\d+", t)), key=lambda t: int(t.rsplit("_d", 1)[-1]))
    if Ks and per_d:
        fig, ax = plt.subplots(figsize=(6, 4))
        hops = [int(t.rsplit("_d", 1)[-1]) for t in per_d]
        for o, ds in by_obj.items():
            for K, style in ((Ks[0], ":"), (Ks[-1], "-")):
                ax.plot(hops, [_mean_score(ds, K, t) for t in per_d], style, marker="o", color=colors[o],
                        label=f"{SHORT[o]} K={K}")
        ax.set_ylim(-0.02, 1.02)
        save(fig, ax, "accuracy_per_difficulty.png", "Accuracy per difficulty", "difficulty (hops)", "exact match")
    return paths


def print_report(report: Path) -> None:
    text = report.read_text()
    print(text.split("## Plots")[0])


def main_compare(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="huginn-db compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--mode", choices=["step", "compute"], default="step")
    ap.add_argument("--flops", type=float, default=None, help="compute mode: FLOP budget per variant")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--num-steps", default="1,2,4,8,16", help="test-time depths for evaluation")
    ap.add_argument("--tasks", default=None, help="comma-separated lm-eval tasks (default: by data)")
    ap.add_argument("--limit", type=int, default=None, help="lm-eval --limit per task")
    ap.add_argument("--out", default=None, help="default: the recipe's run_dir parent + /compare")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args(argv)
    try:
        base = load_config(args.recipe, args.overrides)
        out = Path(args.out) if args.out else Path(base.run_dir).parent
        report = compare(args.recipe, args.mode, args.seeds, [int(k) for k in args.num_steps.split(",")],
                         args.tasks.split(",") if args.tasks else None, args.limit, out, args.overrides,
                         args.flops)
    except ConfigError as err:
        print(f"huginn-db: error: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        print(f"huginn-db: error: a training run failed (exit {err.returncode})", file=sys.stderr)
        return err.returncode or 1
    print_report(report)
    print(f"report: {report}")
    return 0


def main_report(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="huginn-db report", description="Rebuild report.md and plots from run dirs.")
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default=None, help="default: the first run's parent directory")
    args = ap.parse_args(argv)
    missing = [r for r in args.runs if not (Path(r) / "metrics.jsonl").is_file()]
    if missing:
        print(f"huginn-db: error: not a run directory (no metrics.jsonl): {missing[0]}", file=sys.stderr)
        return 2
    report = write_report([Path(r) for r in args.runs], Path(args.out) if args.out else Path(args.runs[0]).parent)
    print_report(report)
    print(f"report: {report}")
    return 0
