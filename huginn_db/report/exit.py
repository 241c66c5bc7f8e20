"""The report's adaptive-exit section: accuracy against the mean loop iterations used, under
exit rules and at fixed depths — each objective's compute/accuracy frontier — from each run's
eval/lm_eval_exit.json (written by `compare --exit`) and eval/lm_eval.json."""

from __future__ import annotations

import statistics

from huginn_db.report.run_data import color, fmt, headline_metric, runs_with, short


def _accuracy(task_scores: dict) -> float:
    """Mean headline metric over the scored tasks (NaN: none)."""
    values = [hm[1] for t in task_scores.values() if (hm := headline_metric(t))]
    return statistics.mean(values) if values else float("nan")


def _points(ds: list[dict]) -> list[tuple[str, list[float], list[float]]]:
    """(row label, mean iterations per seed, accuracy per seed): fixed depths, then rules."""
    Ks = sorted({K for d in ds for K in d["scores"]}, key=int)
    rows = [(f"fixed K={K}", [float(K)] * len(ds), [_accuracy(d["scores"].get(K, {})) for d in ds]) for K in Ks]
    rules = sorted({r for d in ds for r in d["exits"]["rules"]})
    for r in rules:
        got = [d["exits"]["rules"][r] for d in ds if r in d["exits"]["rules"]]
        rows.append((f"exit {r}", [g["mean_iterations"] for g in got], [_accuracy(g["scores"]) for g in got]))
    return rows


def exit_section(by_obj: dict) -> list[str]:
    objs = runs_with(by_obj, "exits")
    if not objs:
        return []
    depth = next(iter(objs.values()))[0]["exits"]["max_steps"]
    lines = [
        "",
        "## Adaptive exit: accuracy vs mean iterations used",
        "",
        f"Each position stops iterating when its rule is met (huginn_db.objectives.adaptive), at most K={depth}; "
        "accuracy is the mean headline metric over the scored tasks, iterations the mean per scored or "
        "generated position. Fixed-K rows are the same runs' ordinary scores. Mean ± std over seeds.",
        "",
        "| objective | inference | mean iterations | accuracy |",
        "|---|---|---|---|",
    ]
    for o, ds in objs.items():
        for label, its, acc in _points(ds):
            lines.append(f"| {short(o)} | {label} | {fmt(its, '.2f')} | {fmt(acc)} |")
    return lines


def exit_plot(by_obj: dict, plt):
    objs = runs_with(by_obj, "exits")
    if not objs:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for o, ds in objs.items():
        pts = _points(ds)
        fixed = [(statistics.mean(i), statistics.mean(a)) for label, i, a in pts if label.startswith("fixed")]
        rules = [(statistics.mean(i), statistics.mean(a)) for label, i, a in pts if label.startswith("exit")]
        ax.plot(*zip(*fixed), marker="o", color=color(o), label=f"{short(o)} fixed K")
        if rules:
            ax.plot(*zip(*rules), marker="^", linestyle="none", color=color(o), label=f"{short(o)} adaptive exit")
    ax.set(title="Accuracy vs mean iterations used", xlabel="mean loop iterations per position", ylabel="accuracy")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    return fig
