"""`huginn-db flops` and `huginn-db peak`: a recipe's compute cost for every registered objective,
and this machine's matmul FLOP/s (the MFU denominator).

    huginn-db flops RECIPE.yaml [dotted.key=value ...] [--json] [--measure] [--baseline NAME]
                    [--gpu NAME --mfu X [--gpus N] [--dtype bf16|fp16|tf32|fp32]]
    huginn-db peak [--json]

Ratios are each objective's cost over the baseline's (default: the recipe's objective), e.g.
`huginn-db flops recipes/paper-lm1b-db.yaml` gives BPTT's training FLOPs per step in units of
DiffusionBlocks'. With --gpu, each objective's training budget (train.max_steps optimizer steps
of grad_accum micro-batches at the recipe's shape) is projected onto N of that GPU at an
assumed MFU: wall hours = FLOPs / (dense peak × MFU × N) / 3600, GPU-hours = N × wall hours.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from huginn_db.compute import (
    INFERENCE_STEPS,
    TRAIN_PARTS,
    activation_memory,
    inference_flops,
    param_counts,
    train_flops,
)
from huginn_db.config import ConfigError, RunConfig, load_config
from huginn_db.gpus import DTYPES, GPUS
from huginn_db.objectives import OBJECTIVES


def recipe_seq_len(cfg: RunConfig) -> int:
    """Training sequence length: the text window, else the model context (an upper bound for
    the variable-length reasoning examples)."""
    return cfg.data.text.seq_len if cfg.data.name == "text" else cfg.model.context


def flops_report(cfg: RunConfig, num_steps=INFERENCE_STEPS, baseline: str | None = None) -> dict:
    """Parameters, training FLOPs, inference FLOPs per token and activation memory of every
    registered objective on the recipe's model shape, and their ratios to `baseline`."""
    mc, B, T = cfg.model, cfg.train.micro_batch_size, recipe_seq_len(cfg)
    baseline = baseline or cfg.objective.name
    if baseline not in OBJECTIVES:
        raise ConfigError(f"--baseline must be one of {', '.join(OBJECTIVES)}, got {baseline!r}")
    n = B * T
    train, infer, params, memory, shape = {}, {}, {}, {}, {}
    for name, obj in OBJECTIVES.items():
        oc = getattr(cfg.objective, name)
        step = train_flops(mc, oc, B, T)
        train[name] = {"per_step": step, "per_token": {k: v / n for k, v in step.items()}}
        infer[name] = {str(K): inference_flops(mc, oc, K, T) for K in num_steps}
        params[name] = param_counts(dataclasses.replace(mc, **obj.model_options(oc)), obj.sigma_conditioning)
        memory[name] = activation_memory(mc, oc, B, T)
        grad, nograd = obj.core_iterations(oc)
        shape[name] = {**dataclasses.asdict(oc), "core_grad_iterations": grad, "core_nograd_iterations": nograd}
    base = train[baseline]["per_step"]
    return {
        "objective": cfg.objective.name,
        "baseline": baseline,
        "shape": {
            "vocab_size": mc.vocab_size,
            "hidden": mc.hidden,
            "heads": mc.heads,
            "mlp_hidden": mc.mlp_hidden,
            "layers": [mc.prelude_layers, mc.core_layers, mc.coda_layers],
            "micro_batch_size": B,
            "seq_len": T,
            "grad_accum": cfg.train.grad_accum,
            "tokens_per_step": n,
        },
        "objectives": shape,
        "params": params,
        "train": train,
        "train_ratio": {o: t["per_step"]["total"] / base["total"] for o, t in train.items()},
        # each part's share of a ratio: (its part − the baseline's) / baseline total, plus 1, adds up to it
        "train_ratio_by_part": {
            o: {k: (t["per_step"][k] - base[k]) / base["total"] for k in TRAIN_PARTS} for o, t in train.items()
        },
        "inference": infer,
        "inference_ratio": {
            o: {K: v["total"] / infer[baseline][K]["total"] for K, v in i.items()} for o, i in infer.items()
        },
        "activation_memory": memory,
    }


def _fmt(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3f} {unit}"
    return f"{x:.0f} "


def format_report(rep: dict, measured: dict | None = None) -> str:
    s, names, base = rep["shape"], list(rep["train"]), rep["baseline"]
    cols = lambda vals: "".join(f"{v:>14}" for v in vals)  # noqa: E731
    out = [
        f"model: V={s['vocab_size']} h={s['hidden']} heads={s['heads']} mlp={s['mlp_hidden']} "
        f"layers={'/'.join(map(str, s['layers']))}; step = {s['micro_batch_size']}×{s['seq_len']} "
        f"= {s['tokens_per_step']} tokens (× grad_accum {s['grad_accum']} per optimizer step); "
        f"recipe objective: {rep['objective']}"
    ]
    for name, o in rep["objectives"].items():
        knobs = ", ".join(f"{k}={v}" for k, v in o.items() if not k.startswith("core_"))
        out.append(
            f"{name}: {knobs}; E[core iterations] with grad {o['core_grad_iterations']:.3f}, "
            f"without {o['core_nograd_iterations']:.3f}"
        )
    label = {n: OBJECTIVES[n].short if n in OBJECTIVES else n for n in names}
    out += ["", f"{'parameters':<22}" + cols(label[n] for n in names)]
    for k in ("embedding", "prelude", "core", "coda", "final_norm", "sigma_embed", "adaln", "total"):
        out.append(f"  {k:<20}" + cols(f"{rep['params'][n][k]:,}" for n in names))
    for unit in ("per_step", "per_token"):
        out += ["", f"{'training FLOPs ' + unit.replace('_', ' '):<22}" + cols(label[n] for n in names)]
        for k in (*TRAIN_PARTS, "total"):
            out.append(f"  {k:<20}" + cols(_fmt(rep["train"][n][unit][k]) for n in names))
    short = {n: OBJECTIVES[n].short for n in names}
    out.append("")
    for n in names:
        if n != base:
            parts = " ".join(f"{v:+.3f} ({k})" for k, v in rep["train_ratio_by_part"][n].items() if abs(v) > 5e-4)
            out += [
                f"ratio {short[n]}/{short[base]} training FLOPs per step (E over r): {rep['train_ratio'][n]:.2f}x",
                f"  = 1 {parts}",
            ]
    if measured:
        out += ["", "measured (FlopCounterMode, one real step):"]
        for name, m in measured.items():
            out.append(
                f"  {name:<16} batch {m['batch']}×{m['seq']}"
                + (f", r={m['r']}" if m.get("r") else "")
                + f": measured {_fmt(m['measured'])} analytic {_fmt(m['analytic'])} "
                f"(measured/analytic {m['measured'] / m['analytic']:.4f})"
            )
    out += [
        "",
        "inference FLOPs per new token (KV cache, context = seq_len); per iteration; / " + base,
        "  K "
        + cols(label[n] for n in names)
        + cols(f"{label[n]}/iter" for n in names)
        + cols(f"{label[n]}/{label[base]}" for n in names if n != base),
    ]
    for K in rep["inference"][base]:
        out.append(
            f"  {K:<2}"
            + cols(_fmt(rep["inference"][n][K]["total"]) for n in names)
            + cols(_fmt(rep["inference"][n][K]["per_iteration"]) for n in names)
            + cols(f"{rep['inference_ratio'][n][K]:.2f}x" for n in names if n != base)
        )
    mem = rep["activation_memory"]
    out += [
        "",
        "activation memory per step (estimate, fp32): "
        + "; ".join(
            f"{n} saved {mem[n]['saved'] / 2**20:,.0f} MiB, peak {mem[n]['peak'] / 2**20:,.0f} MiB" for n in names
        ),
    ]
    return "\n".join(out)


def projection(rep: dict, cfg: RunConfig, gpu: str, mfu: float, gpus: int = 1, dtype: str | None = None) -> dict:
    """Wall hours and GPU-hours of each objective's training budget on `gpus` × `gpu` (a GPUS key)
    at model FLOPs utilisation `mfu`; dtype: the peak to use (default: the recipe's precision on
    a GPU, bf16 unless train.precision=fp32)."""
    if gpu not in GPUS:
        raise ConfigError(f"--gpu must be one of {', '.join(GPUS)}, got {gpu!r}")
    if not 0 < mfu <= 1 or gpus < 1:
        raise ConfigError(f"--mfu must be in (0, 1] and --gpus >= 1, got --mfu {mfu:g} --gpus {gpus}")
    dtype = dtype or ("fp32" if cfg.train.precision == "fp32" else "bf16")
    peak = GPUS[gpu].peak(dtype)
    micro_steps = cfg.train.max_steps * cfg.train.grad_accum
    out = {}
    for name, t in rep["train"].items():
        flops = t["per_step"]["total"] * micro_steps
        hours = flops / (peak * mfu * gpus) / 3600
        out[name] = {"flops": flops, "wall_hours": hours, "gpu_hours": hours * gpus}
    return {
        "gpu": gpu,
        "gpu_name": GPUS[gpu].name,
        "dtype": dtype,
        "peak_flops_per_s": peak,
        "mfu": mfu,
        "gpus": gpus,
        "tokens": micro_steps * rep["shape"]["tokens_per_step"],
        "objectives": out,
    }


def format_projection(pr: dict, cfg: RunConfig) -> str:
    t, n = cfg.train, pr["gpus"]
    out = [
        f"projection onto {n} × {pr['gpu_name']} (dense {pr['dtype']} peak {pr['peak_flops_per_s'] / 1e12:,.1f} "
        f"TFLOP/s) at MFU {pr['mfu']:g}: the budget of {t.max_steps} steps × grad_accum {t.grad_accum} = "
        f"{_fmt(pr['tokens'])}tokens, shared by the GPUs",
        f"  (as {n} ranks of this micro_batch_size they would train {n}× as many tokens: divide grad_accum or micro_batch_size by {n})"
        if n > 1
        else None,
        f"  {'objective':<20}{'training FLOPs':>16}{'wall hours':>12}{'GPU-hours':>12}",
    ]
    for name, o in pr["objectives"].items():
        out.append(f"  {name:<20}{o['flops']:>16.4e}{o['wall_hours']:>12.4g}{o['gpu_hours']:>12.4g}")
    return "\n".join(line for line in out if line is not None)


def _measure(cfg: RunConfig, B: int, T: int) -> dict:
    """One real step per objective at batch B × T on this machine's CPU (random tokens)."""
    from huginn_db.measure import measure_step_flops
    from huginn_db.model import RecurrentDepthLM

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.model.vocab_size, (B, T + 1), generator=g)
    batch = {"input_ids": ids[:, :-1], "target_ids": ids[:, 1:], "loss_weight": torch.ones(B, T)}
    out = {}
    for name, obj in OBJECTIVES.items():
        oc = getattr(cfg.objective, name)
        model = RecurrentDepthLM(dataclasses.replace(cfg.model, **obj.model_options(oc)))
        r = obj.draw_iterations(oc, 0, cfg.seed)
        measured = measure_step_flops(model, obj(oc, seed=cfg.seed), batch, step=0)
        out[name] = {
            "batch": B,
            "seq": T,
            "r": r,
            "measured": measured,
            "analytic": train_flops(cfg.model, oc, B, T, r=r)["total"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="huginn-db flops",
        description="Analytic (and measured) compute per training step and per token for a recipe, every objective.",
    )
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--baseline", default=None, help="ratios relative to this objective (default: the recipe's)")
    ap.add_argument(
        "--measure",
        action="store_true",
        help="also count one real step per objective with FlopCounterMode (builds the model: small shapes only)",
    )
    ap.add_argument("--measure-batch", type=int, default=1)
    ap.add_argument("--measure-seq", type=int, default=64, help="capped at the recipe's seq_len")
    ap.add_argument("--gpu", default=None, help=f"project the training budget onto this GPU: {', '.join(GPUS)}")
    ap.add_argument("--mfu", type=float, default=None, help="with --gpu: the model FLOPs utilisation to assume")
    ap.add_argument("--gpus", type=int, default=1, help="with --gpu: how many share the budget")
    ap.add_argument("--dtype", choices=DTYPES, default=None, help="with --gpu: which peak (default: the recipe's)")
    args = ap.parse_intermixed_args(argv)
    if (args.gpu is None) != (args.mfu is None):
        raise ConfigError("--gpu and --mfu go together: the GPU to project onto and the MFU to assume (e.g. 0.4)")
    cfg = load_config(args.recipe, args.overrides)
    rep = flops_report(cfg, baseline=args.baseline)
    measured = _measure(cfg, args.measure_batch, min(args.measure_seq, recipe_seq_len(cfg))) if args.measure else None
    proj = projection(rep, cfg, args.gpu, args.mfu, args.gpus, args.dtype) if args.gpu else None
    if args.json:
        extra = {"measured": measured} if measured else {}
        print(json.dumps({**rep, **extra, **({"projection": proj} if proj else {})}, indent=2))
    else:
        print(format_report(rep, measured) + ("\n\n" + format_projection(proj, cfg) if proj else ""))
    return 0


def main_peak(argv: list[str] | None = None) -> int:
    from huginn_db.measure import measure_peak

    ap = argparse.ArgumentParser(
        prog="huginn-db peak", description="Measured bf16 and fp32 matmul FLOP/s (MFU denominator)."
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seconds", type=float, default=1.0, help="per dtype")
    ap.add_argument("--n", type=int, default=None, help="matrix size (default 1024 on CPU, 8192 on CUDA)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    peaks = {
        name: measure_peak(dt, args.n, args.seconds, args.device)
        for name, dt in (("bf16", torch.bfloat16), ("fp32", torch.float32))
    }
    if args.json:
        print(json.dumps({"device": args.device, "threads": torch.get_num_threads(), "flops_per_s": peaks}))
    else:
        for name, v in peaks.items():
            print(f"{name} matmul on {args.device} ({torch.get_num_threads()} threads): {v / 1e9:,.1f} GFLOP/s")
    return 0
