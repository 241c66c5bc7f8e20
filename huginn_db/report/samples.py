"""The report's sample-quality section (the DiffusionBlocks paper's Table 5 at this scale) and
its plot, from each text run's eval/text_quality.json (written by huginn_db.textgen)."""

from __future__ import annotations

import statistics

from huginn_db.report.run_data import color, fmt, runs_with, short

METRICS = (  # (key in text_quality.json, column, format)
    ("mauve", "MAUVE (c=0.2)", ".3f"),
    ("mauve_c5", "MAUVE (c=5)", ".3f"),
    ("gen_ppl", "gen-PPL", ".1f"),
    ("entropy", "entropy", ".2f"),
    ("distinct_2", "distinct-2", ".3f"),
)


def _Ks(ds: list[dict]) -> list[str]:
    return sorted({K for d in ds for K in d["samples"]["scores"]}, key=int)


def _cells(ds: list[dict], K: str, key: str) -> list[float]:
    return [d["samples"]["scores"][K][key] for d in ds if K in d["samples"]["scores"]]


def samples_section(by_obj: dict) -> list[str]:
    objs = runs_with(by_obj, "samples")
    if not objs:
        return []
    runs = [d for ds in objs.values() for d in ds]
    pr, judge = runs[0]["samples"]["protocol"], runs[0]["samples"]["judge"]
    how = "greedy" if pr["greedy"] else f"temperature {pr['temperature']:g}, top-k {pr['top_k']}, top-p {pr['top_p']:g}"
    lines = [
        "",
        "## Samples: MAUVE, generative perplexity and entropy vs test-time iterations",
        "",
        f"The DiffusionBlocks paper's Table 5 protocol at this scale: {pr['prompts']} held-out prompts of "
        f"{pr['prompt_tokens']} tokens × {pr['per_prompt']} sampled continuations of {pr['new_tokens']} tokens "
        f"({how}; each seed samples on its own stream) against the real continuations; judge LM `{judge}`. "
        "MAUVE on judge features at scaling 0.2 (the paper's) and 5 (mauve-text's default); gen-PPL: the "
        "judge's perplexity of the samples given their prompts (low for repetitive text too: read it with the "
        "entropy, unigram entropy in nats per sample); val loss: the trainer's held-out loss at that K. "
        "Mean ± std over seeds.",
    ]
    if any(d["samples"]["judge"] != judge or d["samples"]["protocol"] | {"seed": 0} != pr | {"seed": 0} for d in runs):
        lines += ["", "**The runs below were not all sampled and judged alike: compare rows with care.**"]
    lines += [
        "",
        "| objective | K | " + " | ".join(c for _, c, _ in METRICS) + " | val loss |",
        "|---|---|" + "---|" * (len(METRICS) + 1),
    ]
    for o, ds in objs.items():
        for K in _Ks(ds):
            val = [d["validation"][K]["loss"] for d in ds if K in d.get("validation", {})]
            cells = [fmt(_cells(ds, K, key), spec) for key, _, spec in METRICS]
            lines.append(f"| {short(o)} | {K} | " + " | ".join(cells) + f" | {fmt(val)} |")
    ref = [s for d in runs for s in d["samples"]["scores"].values()]
    lines.append(
        "| held-out text (references) | – | – | – | "
        + " | ".join(
            fmt([s[k] for s in ref], spec) for k, spec in (("reference_ppl", ".1f"), ("reference_entropy", ".2f"))
        )
        + f" | {fmt([s['reference_distinct_2'] for s in ref])} | – |"
    )
    changes = []
    for o, ds in objs.items():
        Ks = _Ks(ds)
        if len(Ks) > 1:
            dm = statistics.mean(_cells(ds, Ks[-1], "mauve")) - statistics.mean(_cells(ds, Ks[0], "mauve"))
            dp = statistics.mean(_cells(ds, Ks[-1], "gen_ppl")) - statistics.mean(_cells(ds, Ks[0], "gen_ppl"))
            changes.append(f"{short(o)} MAUVE {dm:+.3f}, gen-PPL {dp:+.1f}")
    if changes:
        lines += ["", "From the smallest to the largest K (means): " + "; ".join(changes) + "."]
    return lines


def samples_plot(by_obj: dict, plt):
    """MAUVE and gen-PPL vs K per objective (means over seeds); None without samples."""
    objs = runs_with(by_obj, "samples")
    if not objs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for o, ds in objs.items():
        Ks = _Ks(ds)
        for ax, key in zip(axes, ("mauve", "gen_ppl")):
            ax.plot(
                [int(K) for K in Ks],
                [statistics.mean(_cells(ds, K, key)) for K in Ks],
                marker="o",
                color=color(o),
                label=short(o),
            )
    ref = statistics.mean(
        s["reference_ppl"] for ds in objs.values() for d in ds for s in d["samples"]["scores"].values()
    )
    axes[1].axhline(ref, color="grey", linestyle="--", label="held-out text")
    axes[0].set(title="MAUVE (c=0.2) vs test-time iterations", xlabel="K", ylabel="MAUVE")
    axes[1].set(
        title="Generative perplexity vs test-time iterations", xlabel="K", ylabel="gen-PPL (judge)", yscale="log"
    )
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.legend()
    return fig
