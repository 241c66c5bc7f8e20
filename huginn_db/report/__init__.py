"""report.md and plots from run directories: training cost, the depth benchmark (accuracy per
difficulty × test-time iterations, extrapolation gain, the shortcut audit) and lm-eval scores.

Everything is rebuilt from what each run directory keeps (config.yaml, metrics.jsonl,
eval/lm_eval.json), so `huginn-db report RUN ...` reproduces what `huginn-db compare` wrote.

Extrapolation gain of one run: accuracy on the first test difficulty past the training
difficulties at the largest evaluated K, minus the same at the smallest (K = 1). The depth
scaling at the training boundary is the same difference at the largest trained difficulty.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from huginn_db import machine
from huginn_db.report.exit import exit_plot, exit_section
from huginn_db.report.run_data import (  # noqa: F401  (re-exported: the report's public helpers)
    _DEPTH_TASK,
    _chance,
    _corpus,
    by_objective,
    color,
    depth_matrix,
    depth_summary,
    fmt,
    headline_metric,
    load_run,
    runs_with,
    short,
    task_caveats,
)
from huginn_db.report.samples import samples_plot, samples_section
from huginn_db.report.target import target_plot, target_section


def _depth_section(data: list[dict], by_obj: dict) -> list[str]:
    mats = {id(d): depth_matrix(d) for d in data}
    if not any(mats.values()):
        return []
    first = next(d for d in data if mats[id(d)])
    r = first["cfg"]["data"]["reasoning"]
    trained = set(r["train_difficulties"])
    chance = _chance(first)
    lines = [
        "",
        f"## Depth benchmark: `{r['family']}` family",
        "",
        f"Exact match per test difficulty (rows) and test-time iterations K (columns: r for BPTT, Euler "
        f"steps over K σ-bands for DB); trained on d ∈ {sorted(trained)}; chance {chance:.3f}; mean ± std over "
        f"seeds where there are several. ‡ marks the trained difficulties.",
    ]
    for o, ds in by_obj.items():
        ds = [d for d in ds if mats[id(d)]]
        if not ds:
            continue
        diffs = sorted({k for d in ds for k in mats[id(d)]})
        Ks = sorted({K for d in ds for row in mats[id(d)].values() for K in row})
        lines += [
            "",
            f"**{short(o)}** ({len(ds)} seed{'s' if len(ds) > 1 else ''})",
            "",
            "| difficulty | " + " | ".join(f"K={K}" for K in Ks) + " |",
            "|---" * (len(Ks) + 1) + "|",
        ]
        for k in diffs:
            cells = [fmt([mats[id(d)].get(k, {}).get(K, float("nan")) for d in ds]) for K in Ks]
            lines.append(f"| d{k}{' ‡' if k in trained else ''} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| objective | first unseen d | K_lo → K_hi | accuracy at K_lo | at K_hi | extrapolation gain | "
        "per seed | largest trained d: gain K_lo → K_hi |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o, ds in by_obj.items():
        sums = [s for d in ds if (s := depth_summary(d)) is not None and "gain" in s]
        if not sums:
            continue
        s0 = sums[0]
        lines.append(
            f"| {short(o)} | d{s0['unseen']} | {s0['k_lo']} → {s0['k_hi']} | {fmt([s['acc_lo'] for s in sums])} | "
            f"{fmt([s['acc_hi'] for s in sums])} | **{fmt([s['gain'] for s in sums], '+.3f')}** | "
            f"{', '.join(format(s['gain'], '+.3f') for s in sums)} | "
            f"d{s0['trained_max']}: {fmt([s.get('scaling', float('nan')) for s in sums], '+.3f')} |"
        )
    return lines + _bar_section(by_obj) + _audit_section(first)


def _bar_section(by_obj: dict) -> list[str]:
    """Every objective against the budget reference (BPTT): FLOPs per step, extrapolation gain
    and accuracy at the largest trained difficulty (each at its best K), means over seeds."""
    from huginn_db.objectives import OBJECTIVES

    refs = [o for o, ds in by_obj.items() if o in OBJECTIVES and OBJECTIVES[o].budget_reference and ds]
    if not refs or len(by_obj) < 2:
        return []

    def means(ds):
        sums = [(d, s) for d in ds if (s := depth_summary(d)) is not None and "gain" in s]
        if not sums:
            return None
        best = [max(depth_matrix(d).get(s["trained_max"], {}).values(), default=float("nan")) for d, s in sums]
        return {
            "flops": statistics.mean(d["train"][-1]["flops"] / d["train"][-1]["step"] for d in ds),
            "gain": statistics.mean(s["gain"] for _, s in sums),
            "trained": statistics.mean(best),
            "seeds": len(sums),
        }

    ref = means(by_obj[refs[0]])
    if ref is None:
        return []
    lines = [
        "",
        f"Against {short(refs[0])} (the bar: ≤ 1/5 of its training FLOPs per step, extrapolation gain within 5 "
        f"points, accuracy at the largest trained difficulty — each objective at its best K — within 2 points; "
        f"means over seeds):",
        "",
        "| objective | seeds | FLOPs/step ÷ ref | gain − ref (points) | largest trained d, best K − ref (points) | bar |",
        "|---|---|---|---|---|---|",
    ]
    for o, ds in by_obj.items():
        m = means(ds)
        if o == refs[0] or m is None:
            continue
        ratio, dg, dt = (
            m["flops"] / ref["flops"],
            100 * (m["gain"] - ref["gain"]),
            100 * (m["trained"] - ref["trained"]),
        )
        ok = ratio <= 0.2 and dg >= -5 and dt >= -2
        lines.append(
            f"| {short(o)} | {m['seeds']} | {ratio:.2f} | {dg:+.1f} | {dt:+.1f} | {'**met**' if ok else 'not met'} |"
        )
    return lines


def _validation_section(by_obj: dict) -> list[str]:
    """Held-out text loss per test-time depth K (the trainer's own split and scoring)."""
    objs = runs_with(by_obj, "validation")
    if not objs:
        return []
    Ks = sorted({K for ds in objs.values() for d in ds for K in d["validation"]}, key=int)
    lines = [
        "",
        "## Held-out text: validation loss vs test-time iterations",
        "",
        "Nats per token on the documents the run held out (data.text.val_fraction, drawn with the run's seed) "
        "at K loop iterations: the recurrence's logits (BPTT and the other latent-state objectives); for DB "
        "the last denoiser evaluation of a K-step sampler run from noise (K = 1: the context-only σ_max "
        "prediction). Mean ± std over seeds.",
        "",
        "| objective | seeds | " + " | ".join(f"K={K}" for K in Ks) + " | best K | loss at K_max − at K=1 |",
        "|---|---|" + "---|" * (len(Ks) + 2),
    ]
    for o, ds in objs.items():
        cells = [fmt([d["validation"].get(K, {}).get("loss", float("nan")) for d in ds]) for K in Ks]
        means = {K: statistics.mean(d["validation"][K]["loss"] for d in ds if K in d["validation"]) for K in Ks}
        delta = [d["validation"][Ks[-1]]["loss"] - d["validation"][Ks[0]]["loss"] for d in ds]
        lines.append(
            f"| {short(o)} | {len(ds)} | "
            + " | ".join(cells)
            + f" | {min(means, key=means.get)} | {fmt(delta, '+.3f')} |"
        )
    return lines


def _audit_section(run: dict, examples: int = 2000) -> list[str]:
    from huginn_db.data.audit import MARGIN, audit, format_audit

    rows = audit(_corpus(run), examples)
    verdict = (
        "every trivial predictor stays within chance + 5 points"
        if all(r["pass"] for r in rows)
        else "**some trivial predictor beats chance by more than 5 points: the scores above may measure a shortcut**"
    )
    return [
        "",
        "### Shortcut audit (the dumbest predictors on the same test distribution)",
        "",
        f"Best of {len(rows[0]['scores'])} trivial predictors (fixed positions from either end, majority answer, "
        f"first/last constant, bag-of-symbols majority and naive Bayes, the last statement's value) on {examples} "
        f"test-stream problems per difficulty; pass = within chance + {MARGIN:.2f}: {verdict}.",
        "",
        format_audit(rows),
    ]


# --- the whole report ---------------------------------------------------------------------------


def write_report(runs: list[Path], out: Path) -> Path:
    data = [load_run(Path(r)) for r in runs]
    out.mkdir(parents=True, exist_ok=True)
    by_obj = by_objective(data)
    # equal step counts: step-matched; otherwise the steps were set from a FLOP budget
    mode = "step" if len({d["train"][-1]["step"] for d in data if d["train"]}) == 1 else "compute"
    lines = [f"# {' vs '.join(short(o) for o in by_obj)} ({mode}-matched)", ""] + machine.section(data)
    lines += [
        "## Training cost",
        "",
        "| | steps | tokens | train FLOPs | FLOPs/step | wall time (s) | s/step (median) | tokens/s | peak mem (MiB) | final loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o, ds in by_obj.items():
        if not ds:
            continue
        last = [d["train"][-1] for d in ds]
        s_step = [statistics.median(r["seconds"] for r in d["train"][min(2, len(d["train"]) - 1) :]) for d in ds]
        lines.append(
            "| "
            + " | ".join(
                [
                    short(o),
                    fmt([r["step"] for r in last], ".0f"),
                    fmt([r["tokens"] for r in last], ".0f"),
                    fmt([r.get("flops", float("nan")) for r in last], ".3e"),
                    fmt([r.get("flops", float("nan")) / r["step"] for r in last], ".3e"),
                    fmt([r["elapsed"] for r in last], ".1f"),
                    fmt(s_step, ".3f"),
                    fmt([r["tokens"] / r["elapsed"] for r in last], ".0f"),
                    fmt([r.get("peak_memory_bytes", float("nan")) / 2**20 for r in last], ".0f"),
                    fmt([r["loss"] for r in last], ".4f"),
                ]
            )
            + " |"
        )
    if len(by_obj) > 1:
        f = {o: statistics.mean(d["train"][-1].get("flops", float("nan")) for d in ds) for o, ds in by_obj.items()}
        cheap = min(f, key=f.get)
        lines += [
            "",
            "Training FLOPs relative to "
            + short(cheap)
            + ": "
            + ", ".join(f"{short(o)} **{v / f[cheap]:.2f}×**" for o, v in f.items() if o != cheap)
            + ".",
        ]
    lines += _depth_section(data, by_obj) + target_section(by_obj)
    lines += _validation_section(by_obj) + samples_section(by_obj)
    lines += exit_section(by_obj)

    Ks = sorted({K for d in data for K in d["scores"]}, key=int)
    other = sorted({t for d in data for K in d["scores"] for t in d["scores"][K] if not _DEPTH_TASK.fullmatch(t)})
    if Ks and other:
        lines += [
            "",
            "## Benchmark scores (lm-eval)",
            "",
            "Depth K = loop iterations at test time (r for BPTT, Euler steps over K σ-bands for DB). "
            "Generation tasks use the K-step loop for both; DB log-likelihoods are the "
            "denoiser's context-only (σ_max) prediction.",
            "",
            "| task | metric | K | " + " | ".join(short(o) for o in by_obj) + " |",
            "|---|---|---|" + "---|" * len(by_obj),
        ]
        caveats = {t: c for t, c in task_caveats().items() if t in other}
        for t in other:
            for K in Ks:
                cells, metric = [], None
                for o in by_obj:
                    hms = [hm for d in by_obj[o] if (hm := headline_metric(d["scores"].get(K, {}).get(t, {})))]
                    metric = metric or (hms[0][0] if hms else None)
                    cells.append(fmt([v for _, v in hms]))
                if metric:
                    lines.append(f"| {t}{' †' if t in caveats else ''} | {metric} | {K} | " + " | ".join(cells) + " |")
        if caveats:
            lines += ["", "† Not stock lm-eval's score:"] + [f"- `{t}`: {c}." for t, c in caveats.items()]
    plots = _plots(data, by_obj, out)
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "Runs: " + ", ".join(f"`{d['run']}`" for ds in by_obj.values() for d in ds), ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def _plots(data, by_obj, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)

    fig, ax = plt.subplots(figsize=(6, 4))
    for o, ds in by_obj.items():
        for i, d in enumerate(ds):
            ax.plot(
                [r["flops"] for r in d["train"]],
                [r["loss"] for r in d["train"]],
                color=color(o),
                alpha=0.8,
                label=short(o) if i == 0 else None,
            )
    ax.set(yscale="log", title="Loss vs training compute", xlabel="training FLOPs (analytic)", ylabel="training loss")
    ax.legend()
    save(fig, "loss_vs_flops.png")

    with_val = {o: [d for d in ds if d["validation"]] for o, ds in by_obj.items()}
    if any(with_val.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for o, ds in with_val.items():
            Ks = sorted({K for d in ds for K in d["validation"]}, key=int)
            if ds:
                loss = [statistics.mean(d["validation"][K]["loss"] for d in ds if K in d["validation"]) for K in Ks]
                ax.plot([int(K) for K in Ks], loss, marker="o", color=color(o), label=short(o))
        ax.set(title="Held-out text loss vs test-time iterations", xlabel="K", ylabel="validation loss (nats/token)")
        ax.set_xscale("log", base=2)
        ax.legend()
        save(fig, "validation_vs_iterations.png")
    if (fig := samples_plot(by_obj, plt)) is not None:
        save(fig, "samples_vs_iterations.png")
    if (fig := exit_plot(by_obj, plt)) is not None:
        save(fig, "accuracy_vs_iterations_used.png")
    if (fig := target_plot(by_obj, plt)) is not None:
        save(fig, "accuracy_vs_flops.png")

    with_depth = [d for d in data if depth_matrix(d)]
    if not with_depth:
        return paths
    r = with_depth[0]["cfg"]["data"]["reasoning"]
    boundary, chance = max(r["train_difficulties"]) + 0.5, _chance(with_depth[0])
    objs = [o for o, ds in by_obj.items() if any(depth_matrix(d) for d in ds)]

    def mean_cell(ds, k, K):
        vals = [v for d in ds if (v := depth_matrix(d).get(k, {}).get(K)) is not None]
        return statistics.mean(vals) if vals else float("nan")

    # accuracy per difficulty, one curve per K, per objective
    cols = min(3, len(objs))
    rows = -(-len(objs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(objs) :]:
        ax.set_visible(False)
    for ax, o in zip(axes.flat, objs):
        ds = by_obj[o]
        diffs = sorted({k for d in ds for k in depth_matrix(d)})
        Ks = sorted({K for d in ds for row in depth_matrix(d).values() for K in row})
        cmap = plt.get_cmap("viridis")
        for i, K in enumerate(Ks):
            ax.plot(
                diffs,
                [mean_cell(ds, k, K) for k in diffs],
                marker="o",
                color=cmap(i / max(1, len(Ks) - 1)),
                label=f"K={K}",
            )
        ax.axhline(chance, color="gray", ls="--", lw=1, label="chance")
        ax.axvline(boundary, color="black", ls=":", lw=1, label="training boundary")
        ax.set(
            ylim=(0, 1),
            title=f"{short(o)}: accuracy per difficulty ({r['family']})",
            xlabel="difficulty",
            ylabel="exact match",
        )
        ax.legend(fontsize=8)
    save(fig, "depth_per_difficulty.png")

    # test-time scaling at the largest trained, the first unseen and the hardest difficulty:
    # one panel each, one line per objective
    first = depth_summary(by_obj[objs[0]][0])
    panels = [(first["trained_max"], "largest trained"), (first.get("unseen"), "first unseen")]
    panels.append((max(depth_matrix(by_obj[objs[0]][0])), "hardest"))
    panels = [(k, what) for k, what in panels if k is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (k, what) in zip(axes[0], panels):
        for o in objs:
            ds = by_obj[o]
            Ks = sorted({K for d in ds for row in depth_matrix(d).values() for K in row})
            ax.plot(Ks, [mean_cell(ds, k, K) for K in Ks], marker="o", color=color(o), label=short(o))
        ax.axhline(chance, color="gray", ls="--", lw=1, label="chance")
        ax.set(ylim=(0, 1), title=f"d{k} ({what})", xlabel="test-time iterations K", ylabel="exact match")
        ax.set_xscale("log", base=2)
    axes[0][-1].legend(fontsize=8)
    save(fig, "test_time_scaling.png")
    return paths


def print_report(report: Path) -> None:
    print(report.read_text().split("## Plots")[0])
