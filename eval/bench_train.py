"""Training benchmark: truncated BPTT vs DiffusionBlocks on one model shape, interleaved.

    python eval/bench_train.py                      # paper shape 2/4/2, h 512, V 32000, T 256
    python eval/bench_train.py --quick              # tiny shape, 2 timed steps (CI, < 60 s)
    python eval/bench_train.py --gpu --batch 32     # CUDA, bf16 autocast, xformers if importable
    python eval/bench_train.py --steps 5 --batch 8 --json runs/bench.json

Both objectives train their own copy of the same shape (the DB copy carries AdaLN) with plain
torch AdamW, on random tokens, alternating one step each in one process so that machine load
hits both alike. The first step of each is the warm-up, run under FlopCounterMode: that is the
"measured" FLOPs/step, compared with `huginn_db.compute.train_flops` at the same r (BPTT's r is
drawn per step from the step index, so its FLOPs and time vary; the table also gives the
expectation over r). Time is the full training step (forward, backward, AdamW); s/step is the
median over the timed steps, tokens/s and achieved FLOP/s use their totals, MFU divides the
achieved rate (analytic FLOPs at the sampled r) by a measured matmul peak (fp32 on CPU, bf16 on
CUDA; the best of before and after the runs). Peak memory is what one training step adds on top of weights and optimizer state:
CUDA: max_memory_allocated after a reset, minus memory_allocated before the step; CPU: a fresh
process per objective (glibc told to return freed tensors, MALLOC_MMAP_THRESHOLD_, so RSS follows
live memory), warmed up on one sequence, then the peak-RSS high-water mark (reset through
/proc/self/clear_refs) minus the RSS before the step. BPTT's probe uses the first step whose r
is just above k: its memory does not depend on the no-grad iterations, only on k. The `est.`
row is `compute.activation_memory` (saved activations + the logits gradients). The `chunked CE`
rows repeat the memory measurement with `model.loss_chunk` = --memory-loss-chunk positions:
no B×T×V logits are kept across the step, so activations, not the vocabulary, set the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout too

from huginn_db import compute, measure  # noqa: E402
from huginn_db.model import ModelConfig, RecurrentDepthLM, select_attention_backend  # noqa: E402
from huginn_db.objectives import OBJECTIVES  # noqa: E402

# compare's default set (the controls are opt-in: --objectives)
DEFAULT = tuple(n for n, o in OBJECTIVES.items() if o.compared_by_default)
QUICK = dict(
    vocab=512,
    hidden=64,
    heads=4,
    mlp=256,
    layers="1,2,1",
    seq=32,
    batch=4,
    mean_recurrence=8,
    backprop_depth=2,
    steps=2,
    memory_loss_chunk=32,
    warmup=1,
    peak_seconds=0.3,
    threads=1,
)  # tiny matmuls: a second thread only adds synchronisation


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shape, 2 timed steps")
    ap.add_argument("--gpu", action="store_true", help="CUDA, bf16 autocast")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per objective")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per objective (the first is FLOP-counted)")
    ap.add_argument(
        "--batch",
        type=int,
        default=4,
        help="sequences per step (default: time-bound on 2 CPU cores; the est. memory row shows how far it can go)",
    )
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--mlp", type=int, default=2048)
    ap.add_argument("--layers", default="2,4,2", help="prelude,core,coda")
    ap.add_argument("--mean-recurrence", type=int, default=32)
    ap.add_argument("--backprop-depth", type=int, default=8)
    ap.add_argument("--num-bands", type=int, default=8)
    ap.add_argument("--sigma-per", default="sequence", choices=("sequence", "token"))
    ap.add_argument(
        "--loss-chunk", type=int, default=0, help="model.loss_chunk of the timed runs (0: full logits, the default)"
    )
    ap.add_argument(
        "--memory-loss-chunk",
        type=int,
        default=256,
        help="also probe peak memory with this chunked cross-entropy (0: skip)",
    )
    ap.add_argument("--peak-seconds", type=float, default=1.0, help="matmul peak benchmark time")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument(
        "--objectives",
        nargs="+",
        choices=tuple(OBJECTIVES),
        default=list(DEFAULT),
        help=f"objectives to benchmark (default: {' '.join(DEFAULT)})",
    )
    ap.add_argument(
        "--memory-probe", choices=tuple(OBJECTIVES), help=argparse.SUPPRESS
    )  # internal: one CPU memory probe
    args = ap.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be >= 1 (the first warm-up step is FLOP-counted, not timed)")
    if args.quick:  # explicit flags after --quick still win where they differ from the defaults
        defaults = vars(ap.parse_args([]))
        for k, v in QUICK.items():
            if getattr(args, k) == defaults[k]:
                setattr(args, k, v)
    return args


def configs(args):
    lp, lr, lc = (int(x) for x in args.layers.split(","))
    mc = ModelConfig(
        vocab_size=args.vocab,
        hidden=args.hidden,
        heads=args.heads,
        mlp_hidden=args.mlp,
        prelude_layers=lp,
        core_layers=lr,
        coda_layers=lc,
        context=args.seq,
        init_recurrence=args.mean_recurrence,
        loss_chunk=args.loss_chunk,
    )
    # each flag goes to every objective whose config has that field; the rest keep their defaults
    knobs = {
        "mean_recurrence": args.mean_recurrence,
        "backprop_depth": args.backprop_depth,
        "num_bands": args.num_bands,
        "sigma_per": args.sigma_per,
    }
    ocs = {}
    for name, obj in OBJECTIVES.items():
        have = {f.name for f in dataclasses.fields(obj.config)}
        ocs[name] = obj.config(**{k: v for k, v in knobs.items() if k in have})
    return mc, ocs


def build(mc, name, oc, device, seed):
    torch.manual_seed(seed)
    obj = OBJECTIVES[name]
    model = RecurrentDepthLM(dataclasses.replace(mc, **obj.model_options(oc))).to(device)
    return model, obj(oc, seed=seed), torch.optim.AdamW(model.parameters(), lr=1e-4)


def draw(name, oc, step, seed):
    return OBJECTIVES[name].draw_iterations(oc, step, seed)


def make_batch(args, step, device, rows=None):
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
    ids = torch.randint(0, args.vocab, (rows or args.batch, args.seq + 1), generator=g).to(device)
    return {
        "input_ids": ids[:, :-1],
        "target_ids": ids[:, 1:],
        "loss_weight": torch.ones(ids.shape[0], args.seq, device=device),
    }


def train_step(model, objective, opt, batch, step, autocast, count_flops=False):
    """One AdamW step; returns the FlopCounterMode count when asked (the forward+backward)."""
    flops = None
    with autocast():
        if count_flops:
            flops = measure.measure_step_flops(model, objective, batch, step)
        else:
            loss, _ = objective.loss(model, batch, step)
            loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return flops


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(args) -> int:
    """Child process: peak RSS one training step adds on top of weights + AdamW state (bytes)."""
    mc, ocs = configs(args)
    name = args.memory_probe
    oc = ocs[name]
    model, objective, opt = build(mc, name, oc, torch.device("cpu"), args.seed)
    step = 0
    if draw(name, oc, 0, args.seed) is not None:  # the smallest r > k: a cheap step with all k grad iterations
        k = OBJECTIVES[name].saved_core_iterations(oc)
        rs = {s: draw(name, oc, s, args.seed) for s in range(1000)}
        step = min((s for s in rs if rs[s] > k), key=rs.get, default=max(rs, key=rs.get))
    train_step(model, objective, opt, make_batch(args, step, "cpu", rows=1), step, contextlib.nullcontext)
    gc.collect()
    base = _rss("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    train_step(model, objective, opt, make_batch(args, step, "cpu"), step, contextlib.nullcontext)
    print(json.dumps({"peak_delta": _rss("VmHWM") - base, "r": draw(name, oc, step, args.seed)}))
    return 0


def cpu_memory(argv, name) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    proc = subprocess.run(
        [sys.executable, __file__, *argv, "--memory-probe", name], env=env, capture_output=True, text=True
    )
    if proc.returncode:  # e.g. no /proc/self/clear_refs (not Linux)
        raise SystemExit(f"bench_train: the {name} memory probe failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args, argv) -> dict:
    device = torch.device("cuda" if args.gpu else "cpu")
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("bench_train: --gpu needs CUDA")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if args.gpu else contextlib.nullcontext
    sync = torch.cuda.synchronize if args.gpu else (lambda: None)
    mc, ocs = configs(args)
    peak_dtype = torch.bfloat16 if args.gpu else torch.float32
    peak = measure.measure_peak(peak_dtype, seconds=args.peak_seconds, device=device)
    names = args.objectives
    runs = {name: build(mc, name, ocs[name], device, args.seed) for name in names}
    res = {name: {"times": [], "flops_at_r": [], "r": [], "mem": []} for name in names}
    for step in range(args.warmup + args.steps):
        batch = make_batch(args, step, device)
        for name in names:  # interleaved: one step of each, in turn
            model, objective, opt = runs[name]
            r = draw(name, ocs[name], step, args.seed)
            if args.gpu:
                sync()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            measured = train_step(model, objective, opt, batch, step, autocast, count_flops=step == 0)
            sync()
            dt = time.perf_counter() - t0
            rr = res[name]
            if step == 0:
                rr["measured"], rr["measured_r"] = measured, r
                rr["analytic_at_measured_r"] = compute.train_flops(mc, ocs[name], args.batch, args.seq, r=r)["total"]
            if step < args.warmup:
                continue
            rr["times"].append(dt)
            rr["r"].append(r)
            rr["flops_at_r"].append(compute.train_flops(mc, ocs[name], args.batch, args.seq, r=r)["total"])
            if args.gpu:
                rr["mem"].append(torch.cuda.max_memory_allocated() - base)
    # the peak again after the runs: the better of the two is less likely to carry load spikes
    peak = max(peak, measure.measure_peak(peak_dtype, seconds=args.peak_seconds, device=device))
    tokens = args.batch * args.seq
    for name in names:
        rr = res[name]
        rr["expected"] = compute.train_flops(mc, ocs[name], args.batch, args.seq)["total"]
        rr["median_s"] = statistics.median(rr["times"])
        rr["tokens_per_s"] = tokens * len(rr["times"]) / sum(rr["times"])
        rr["achieved"] = sum(rr["flops_at_r"]) / sum(rr["times"])
        rr["mfu"] = rr["achieved"] / peak
        rr["s_at_expected"] = rr["expected"] / rr["achieved"]
        if args.gpu:
            rr["peak_mem"], rr["mem_r"] = max(rr["mem"]), None
        else:
            probe = cpu_memory(argv, name)
            rr["peak_mem"], rr["mem_r"] = probe["peak_delta"], probe["r"]
        bpe = 2 if args.gpu else 4
        rr["mem_est"] = compute.activation_memory(mc, ocs[name], args.batch, args.seq, bytes_per_element=bpe)["peak"]
        if args.memory_loss_chunk:  # the same step with the chunked cross-entropy: no B×T×V logits kept
            chunked = dataclasses.replace(mc, loss_chunk=args.memory_loss_chunk)
            if args.gpu:
                model, objective, opt = runs[name]
                model.cfg.loss_chunk = args.memory_loss_chunk
                step = args.warmup + args.steps
                sync()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                train_step(model, objective, opt, make_batch(args, step, device), step, autocast)
                sync()
                rr["peak_mem_chunked"] = torch.cuda.max_memory_allocated() - base
                model.cfg.loss_chunk = args.loss_chunk
            else:
                rr["peak_mem_chunked"] = cpu_memory([*argv, "--loss-chunk", str(args.memory_loss_chunk)], name)[
                    "peak_delta"
                ]
            rr["mem_est_chunked"] = compute.activation_memory(
                chunked, ocs[name], args.batch, args.seq, bytes_per_element=bpe
            )["peak"]
    backend = select_attention_backend(mc.attention, device)
    return {
        "device": torch.cuda.get_device_name() if args.gpu else f"cpu ({torch.get_num_threads()} threads)",
        "precision": "bf16 autocast" if args.gpu else "fp32",
        "attention": backend,
        "peak_flops": peak,
        "peak_dtype": str(peak_dtype).removeprefix("torch."),
        "shape": {
            "vocab": args.vocab,
            "hidden": args.hidden,
            "heads": args.heads,
            "mlp": args.mlp,
            "layers": args.layers,
            "batch": args.batch,
            "seq": args.seq,
            "mean_recurrence": args.mean_recurrence,
            "backprop_depth": args.backprop_depth,
            "num_bands": args.num_bands,
            "sigma_per": args.sigma_per,
            "loss_chunk": args.loss_chunk,
            "memory_loss_chunk": args.memory_loss_chunk,
        },
        "E_r": {n: sum(OBJECTIVES[n].core_iterations(ocs[n])) for n in names},
        "results": res,
    }


def _f(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if abs(x) >= scale:
            return f"{x / scale:.3f}{unit}"
    return f"{x:.0f}"


def report(out: dict) -> str:
    """One column per objective, and each one's ratio to the cheapest (lowest E[FLOPs]/step)."""
    s, res = out["shape"], out["results"]
    names = list(res)
    base = min(names, key=lambda n: res[n]["expected"])
    others = [n for n in names if n != base]
    lines = [
        f"device {out['device']}, {out['precision']}, attention {out['attention']}; "
        f"{out['peak_dtype']} matmul peak {out['peak_flops'] / 1e9:,.1f} GFLOP/s",
        f"shape V={s['vocab']} h={s['hidden']} heads={s['heads']} mlp={s['mlp']} layers={s['layers'].replace(',', '/')} "
        f"batch {s['batch']}×{s['seq']}; r̄={s['mean_recurrence']} k={s['backprop_depth']}, "
        f"{s['num_bands']} bands, σ per {s['sigma_per']}; E[core iterations] "
        + ", ".join(f"{n} {out['E_r'][n]:.2f}" for n in names),
    ]
    for n in names:
        if res[n]["measured_r"] is not None:
            lines.append(
                f"{n} r: FLOP-counted warm-up step {res[n]['measured_r']}, timed steps "
                f"{', '.join(map(str, res[n]['r']))}" + (f"; memory probe {res[n]['mem_r']}" if res[n]["mem_r"] else "")
            )
    lines.append("")
    mib = 2**20
    rows = [
        ("measured FLOPs/step (warm-up step)", "measured", _f),
        ("analytic FLOPs/step, same r", "analytic_at_measured_r", _f),
        ("measured/analytic", lambda r: r["measured"] / r["analytic_at_measured_r"], "{:.4f}".format),
        ("analytic E[FLOPs]/step (E over r)", "expected", _f),
        ("median s/step (timed steps)", "median_s", "{:.3f}".format),
        ("s/step at E[r] (achieved rate)", "s_at_expected", "{:.3f}".format),
        ("tokens/s", "tokens_per_s", "{:,.0f}".format),
        ("achieved FLOP/s (analytic at r)", "achieved", _f),
        ("MFU", "mfu", "{:.1%}".format),
        ("peak memory Δ/step, measured MiB", lambda r: r["peak_mem"] / mib, "{:,.0f}".format),
        ("peak memory Δ/step, est. MiB", lambda r: r["mem_est"] / mib, "{:,.0f}".format),
    ]
    c = s.get("memory_loss_chunk")
    if c:
        rows += [
            (f"  chunked CE (c={c}), measured MiB", lambda r: r["peak_mem_chunked"] / mib, "{:,.0f}".format),
            (f"  chunked CE (c={c}), est. MiB", lambda r: r["mem_est_chunked"] / mib, "{:,.0f}".format),
        ]
    short = {n: OBJECTIVES[n].short.lower() if n in OBJECTIVES else n for n in names}
    lines.append(
        f"{'':<36}"
        + "".join(f"{short[n]:>12}" for n in names)
        + "".join(f"{short[n] + '/' + short[base]:>14}" for n in others)
    )
    for label, key, fmt in rows:
        get = key if callable(key) else (lambda r, k=key: r[k])
        vals = {n: get(res[n]) for n in names}
        lines.append(
            f"{label:<36}"
            + "".join(f"{fmt(vals[n]):>12}" for n in names)
            + "".join(f"{vals[n] / vals[base]:>13.2f}x" for n in others)
        )
    lines.append("")
    for n in others:
        b, d, tag = res[n], res[base], f"{OBJECTIVES[n].short}/{OBJECTIVES[base].short}" if n in OBJECTIVES else n
        rs = ", ".join(map(str, b["r"])) if b["measured_r"] is not None else "-"
        lines += [
            f"ratio {tag} analytic E[FLOPs]/step: {b['expected'] / d['expected']:.2f}x",
            f"ratio {tag} measured FLOPs/step (r={b['measured_r']}): {b['measured'] / d['measured']:.2f}x",
            f"ratio {tag} median s/step (r={rs}): {b['median_s'] / d['median_s']:.2f}x",
            f"ratio {tag} s/step at E[r]: {b['s_at_expected'] / d['s_at_expected']:.2f}x",
            f"ratio {tag} tokens/s: {b['tokens_per_s'] / d['tokens_per_s']:.2f}x",
            f"ratio {tag} peak memory per step: {b['peak_mem'] / d['peak_mem']:.2f}x",
        ]
        if c:
            lines.append(
                f"ratio {tag} peak memory per step, chunked cross-entropy (c={c}): "
                f"{b['peak_mem_chunked'] / d['peak_mem_chunked']:.2f}x"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        return memory_probe(args)
    out = run(args, argv)
    print(report(out), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
