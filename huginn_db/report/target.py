"""The report's "training FLOPs to a target" section: accuracy on one difficulty at one
test-time depth against cumulative training FLOPs, from the in-training evaluations
(`eval.every` with `eval.every_num_steps` / `eval.every_difficulties`, each record carrying the
FLOPs spent so far) and, as the last point, the run's final lm-eval score of the same cell.

FLOPs to target of a run: the training FLOPs of its first evaluation at or above the target
(a step function: an evaluation every N steps resolves it to N steps). A run that never gets
there is "not reached" at its budget; the mean is over the seeds that got there.
"""

from __future__ import annotations

import statistics

from huginn_db.report.run_data import color, depth_matrix, depth_summary, fmt, short

TARGET = 0.9


def curve(run: dict, difficulty: int, K: int) -> list[tuple[float, float]]:
    """(training FLOPs, exact match) at `difficulty` and `K`, in training order."""
    points = [
        (r["flops"], acc[f"d{difficulty}"])
        for r in run["evals"]
        if "flops" in r and (acc := r["accuracy"].get(str(K), {})) and f"d{difficulty}" in acc
    ]
    final = depth_matrix(run).get(difficulty, {}).get(K)
    spent = run["train"][-1].get("flops") if run["train"] else None
    if final is not None and spent is not None and (not points or spent > points[-1][0]):
        points.append((spent, final))
    return points


def flops_to_target(points: list[tuple[float, float]], target: float = TARGET) -> float | None:
    return next((f for f, acc in points if acc >= target), None)


def _cell(run: dict) -> tuple[int, int] | None:
    """The first unseen difficulty and the largest depth of the in-training evaluation."""
    summary = depth_summary(run)
    Ks = sorted({int(K) for r in run["evals"] for K in r["accuracy"]})
    if not summary or "unseen" not in summary or not Ks:
        return None
    return summary["unseen"], Ks[-1]


def target_section(by_obj: dict, target: float = TARGET) -> list[str]:
    runs = {o: [d for d in ds if d["evals"]] for o, ds in by_obj.items()}
    runs = {o: ds for o, ds in runs.items() if ds}
    cells = {c for ds in runs.values() for d in ds if (c := _cell(d))}
    if len(cells) != 1:  # no in-training evaluation, or runs that do not share a cell
        return []
    (difficulty, K) = cells.pop()
    lines = [
        "",
        f"## Training FLOPs to reach {target:g} at d{difficulty} (first unseen), K = {K}",
        "",
        f"Exact match at d{difficulty} with K = {K} test-time iterations, scored during training "
        "(eval.every) and at the end (lm-eval); FLOPs to target is the training FLOPs of the first "
        "evaluation at or above the target (analytic, `compute.train_flops`). Mean ± std over the seeds "
        "that reached it; ÷ is relative to the first objective's mean.",
        "",
        "| objective | reached | FLOPs to target (per seed) | mean | ÷ | budget | final accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    ref = None
    for o, ds in runs.items():
        per = [flops_to_target(curve(d, difficulty, K), target) for d in ds]
        got = [f for f in per if f is not None]
        mean = statistics.mean(got) if got else None
        ref = ref if ref is not None else mean
        finals = [c[-1][1] for d in ds if (c := curve(d, difficulty, K))]
        lines.append(
            "| "
            + " | ".join(
                [
                    short(o),
                    f"{len(got)}/{len(ds)}",
                    ", ".join(f"{f:.2e}" if f is not None else "not reached" for f in per),
                    fmt(got, ".2e") if got else "–",
                    f"{mean / ref:.2f}" if mean and ref else "–",
                    fmt([d["train"][-1]["flops"] for d in ds], ".2e"),
                    fmt(finals),
                ]
            )
            + " |"
        )
    return lines


def target_plot(by_obj: dict, plt, target: float = TARGET):
    """Accuracy against training FLOPs at the largest trained and the first unseen difficulty:
    the mean over seeds (curves aligned by evaluation), min–max shaded."""
    runs = {o: [d for d in ds if d["evals"]] for o, ds in by_obj.items()}
    runs = {o: ds for o, ds in runs.items() if ds}
    first = next(iter(runs.values()), [None])[0]
    cell = _cell(first) if first else None
    if cell is None:
        return None
    unseen, K = cell
    trained = max(first["cfg"]["data"]["reasoning"]["train_difficulties"])
    panels = [(k, what) for k, what in ((trained, "largest trained"), (unseen, "first unseen"))]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (k, what) in zip(axes[0], panels):
        for o, ds in runs.items():
            curves = [c for d in ds if (c := curve(d, k, K))]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            x = [statistics.mean(c[i][0] for c in curves) for i in range(n)]
            ys = [[c[i][1] for c in curves] for i in range(n)]
            ax.plot(x, [statistics.mean(y) for y in ys], color=color(o), label=f"{short(o)} ({len(curves)})")
            ax.fill_between(x, [min(y) for y in ys], [max(y) for y in ys], color=color(o), alpha=0.2, lw=0)
        ax.axhline(target, color="black", ls=":", lw=1, label=f"target {target:g}")
        ax.set(
            ylim=(0, 1.02), title=f"d{k} ({what}), K = {K}", xlabel="training FLOPs (analytic)", ylabel="exact match"
        )
    # below the panels: the curves fill both of them
    axes[0][0].legend(loc="upper left", bbox_to_anchor=(0.0, -0.16), fontsize=8, frameon=False)
    return fig
