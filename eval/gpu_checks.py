"""In-process checks of the GPU smoke test (eval/gpu_smoke.sh runs them; `--cpu` runs them on CPU).

    python eval/gpu_checks.py env     [--cpu] [--json F]   # versions, device, GPU count
    python eval/gpu_checks.py bf16    [--cpu] [--out DIR] [--objectives NAME ...] [--json F]
    python eval/gpu_checks.py kernels [--cpu] [--no-compile] [--json F]

Every check prints one line `PASS|FAIL|SKIP  name  detail`; the exit code is 1 if one FAILed.

bf16: a Trainer per registered objective (`huginn_db.train.setup` on the demo recipe at
train.precision=bf16), a forward hook on the first core layer's qkv Linear inside
`engine.module`, one `train_step`: every call must return bfloat16, the weights must stay fp32,
and DeepSpeed must not log that it found torch.autocast enabled outside its engine (on CUDA it
then disables autocast for the forward, i.e. the step silently runs in fp32).

kernels: which attention kernel `model.attention=auto` picks (xformers on CUDA where
`import xformers.ops` works); one forward+backward of BPTT and DiffusionBlocks with
`checkpoint_core`, `loss_chunk`, `compile_core` (and SDPA where auto picked xformers) against
the plain model's loss and gradient norm, from the same weights and batch; cached vs uncached
decoding logits (as tests/test_kv_cache.py compares them), in fp32 and under bf16 autocast.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout too

from huginn_db import attention  # noqa: E402
from huginn_db.attention import select_attention_backend, xformers_available  # noqa: E402
from huginn_db.kv_cache import KVCache  # noqa: E402
from huginn_db.model import ModelConfig, RecurrentDepthLM  # noqa: E402
from huginn_db.objectives import OBJECTIVES  # noqa: E402

# DeepSpeed's words when it turns off an autocast it finds around engine(...)
NESTED_AUTOCAST = "torch.autocast is enabled outside DeepSpeed"

# the demo recipe cut down for a CPU dry run (one thread, seconds per objective)
CPU_TINY = [
    "model.hidden=64",
    "model.mlp_hidden=128",
    "train.micro_batch_size=8",
    "train.threads=1",
    "data.reasoning.test_examples=10",
    "data.reasoning.test_difficulties=[1,2]",
    "objective.bptt.mean_recurrence=4",
    "objective.fixed_depth.depth=4",
]

# the model the kernel checks train and decode (small: the point is the kernels, not the speed)
KERNEL_MODEL = dict(
    vocab_size=512,
    hidden=128,
    heads=4,
    mlp_hidden=256,
    prelude_layers=1,
    core_layers=2,
    coda_layers=1,
    context=64,
    init_recurrence=4,
)
KERNEL_OBJECTIVES = {"bptt": dict(mean_recurrence=4, backprop_depth=2), "diffusion_blocks": dict(num_bands=4)}

# relative tolerances: (loss, gradient norm, logits) — bf16 keeps ~3 significant digits
TOLERANCE = {torch.bfloat16: (1e-2, 5e-2, 3e-2), torch.float32: (1e-5, 1e-4, 1e-4)}


class Report:
    """PASS/FAIL/SKIP lines, printed as they come; `failed` decides the exit code."""

    def __init__(self):
        self.lines: list[tuple[str, str, str]] = []
        self.data: dict = {}

    def add(self, status: str, name: str, detail: str = "") -> None:
        self.lines.append((status, name, detail))
        print(f"{status:<4}  {name:<24} {detail}", flush=True)

    def check(self, ok: bool, name: str, detail: str = "") -> bool:
        self.add("PASS" if ok else "FAIL", name, detail)
        return ok

    @property
    def failed(self) -> bool:
        return any(s == "FAIL" for s, _, _ in self.lines)

    def dump(self, path: str | None) -> None:
        if path:
            out = {"checks": [dict(zip(("status", "name", "detail"), x)) for x in self.lines], **self.data}
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(out, indent=2, default=str))


def device_for(cpu: bool) -> torch.device:
    if cpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("gpu_checks: no CUDA device (torch.cuda.is_available() is False); --cpu for a dry run")
    return torch.device("cuda")


def autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


def _error(err: Exception) -> str:
    """An exception as one line, for a FAIL detail."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


# --- env --------------------------------------------------------------------------------------


def module_version(name: str) -> str:
    try:
        mod = __import__(name)
    except Exception as err:  # ImportError, or a build that fails to load
        return f"missing ({_error(err)})"
    return getattr(mod, "__version__", "?")


def env(args) -> Report:
    rep = Report()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda or "none",
        "cuda_available": torch.cuda.is_available(),
        "gpus": gpus,
        "device_name": torch.cuda.get_device_name() if gpus else f"cpu ({platform.processor() or platform.machine()})",
        "bf16_supported": torch.cuda.is_bf16_supported() if gpus else None,
        "deepspeed": module_version("deepspeed"),
        "xformers": module_version("xformers"),
        "xformers_ops": "importable" if xformers_available() else "not importable",
    }
    rep.data["env"] = info
    for k, v in info.items():
        print(f"{k}={v}", flush=True)
    if not args.cpu:
        rep.check(gpus > 0, "env.cuda", f"{gpus} GPU(s): {info['device_name']}, torch {torch.__version__}")
    return rep


# --- bf16 -------------------------------------------------------------------------------------


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def captured_logs(*names: str):
    """Every message logged to these loggers (DeepSpeed's does not propagate to the root)."""
    handler = _Capture()
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler.messages
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def qkv_dtypes(trainer, step: int = 0) -> list[torch.dtype]:
    """Output dtypes of the first core layer's qkv Linear over one `train_step`."""
    seen: list[torch.dtype] = []
    qkv = trainer.engine.module.core.layers[0].attn.qkv
    handle = qkv.register_forward_hook(lambda mod, inputs, out: seen.append(out.dtype))
    try:
        trainer.train_step(step)
    finally:
        handle.remove()
    return seen


def bf16_step(recipe: str, objective: str, run_dir: Path, overrides=()) -> dict:
    """One bf16 train_step of `objective` through the public trainer: what the hook and the logs saw."""
    from huginn_db.components.distributed import init_distributed
    from huginn_db.config import load_config
    from huginn_db.train import setup

    cfg = load_config(
        recipe,
        [
            f"run_dir={run_dir}",
            "overwrite=true",
            f"objective.name={objective}",
            "train.precision=bf16",
            "eval.num_steps=[]",
            *overrides,
        ],
    )
    init_distributed(cfg.train.dist_timeout)
    with contextlib.suppress(ImportError):  # DeepSpeed warns once per process: re-arm it per objective
        from deepspeed.runtime import torch_autocast

        torch_autocast._WARNED_NESTED_AUTOCAST = False
    with captured_logs("DeepSpeed", "") as logs:
        trainer = setup(cfg)
        try:
            dtypes = qkv_dtypes(trainer)
        finally:
            trainer.metrics.close()
    weights = sorted({str(p.dtype) for p in trainer.engine.module.parameters()})
    device = str(trainer.engine.device)
    del trainer
    gc.collect()
    return {
        "device": device,
        "qkv_dtypes": [str(d) for d in dtypes],
        "weight_dtypes": weights,
        "nested_autocast_warnings": [m for m in logs if NESTED_AUTOCAST in m],
    }


def bf16(args) -> Report:
    rep = Report()
    device = device_for(args.cpu)
    if args.cpu:
        torch.set_num_threads(1)
    out = Path(args.out)
    overrides = [*(CPU_TINY if args.cpu else []), *args.override]
    for name in args.objectives:
        try:
            res = bf16_step(args.recipe, name, out / name, overrides)
        except Exception as err:  # one objective's crash is its FAIL line, the others still run
            rep.add("FAIL", f"bf16.{name}", _error(err))
            continue
        rep.data[name] = res
        calls, kinds = len(res["qkv_dtypes"]), sorted(set(res["qkv_dtypes"]))
        ok = calls > 0 and kinds == ["torch.bfloat16"]
        rep.check(ok, f"bf16.{name}.qkv", f"{calls} qkv calls on {res['device']}, output dtypes {kinds}")
        rep.check(
            res["weight_dtypes"] == ["torch.float32"], f"bf16.{name}.weights", f"parameters {res['weight_dtypes']}"
        )
        warned = res["nested_autocast_warnings"]
        rep.check(not warned, f"bf16.{name}.deepspeed", warned[0][:160] if warned else "no nested-autocast warning")
    if device.type == "cpu":  # say what the CPU run cannot show
        rep.add("SKIP", "bf16.cuda", "CPU autocast: DeepSpeed only looks for a CUDA autocast around engine(...)")
    return rep


# --- kernels ----------------------------------------------------------------------------------


def kernel_batch(vocab: int, rows: int, seq: int, device) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (rows, seq + 1), generator=g).to(device)
    return {
        "input_ids": ids[:, :-1],
        "target_ids": ids[:, 1:],
        "loss_weight": torch.ones(rows, seq, device=device),
    }


def build(name: str, device, seed: int = 0, **model_options):
    """The objective and a model of KERNEL_MODEL's shape; the same seed gives the same weights."""
    obj = OBJECTIVES[name]
    oc = obj.config(**KERNEL_OBJECTIVES.get(name, {}))
    torch.manual_seed(seed)
    mc = ModelConfig(**{**KERNEL_MODEL, **model_options, **obj.model_options(oc)})
    model = RecurrentDepthLM(mc).to(device)
    if mc.compile_core:
        model.compile_core()
    return obj(oc, seed=seed), model


def train_pass(name: str, device, dtype, step: int, **model_options) -> tuple[float, float]:
    """(loss, gradient norm) of one forward+backward at `step` from the seed-0 weights."""
    objective, model = build(name, device, **model_options)
    batch = kernel_batch(KERNEL_MODEL["vocab_size"], 4, KERNEL_MODEL["context"], device)
    with autocast(device, dtype):
        loss, _ = objective.loss(model, batch, step)
    loss.backward()
    grads = [p.grad.float().norm() for p in model.parameters() if p.grad is not None]
    return loss.item(), torch.stack(grads).norm().item()


def deep_step(name: str) -> int:
    """A step whose drawn depth has no-grad iterations before the grad ones (BPTT), else 0."""
    obj = OBJECTIVES[name]
    oc = obj.config(**KERNEL_OBJECTIVES.get(name, {}))
    if obj.draw_iterations(oc, 0) is None:
        return 0
    k = obj.saved_core_iterations(oc)
    return next((s for s in range(1000) if obj.draw_iterations(oc, s) > k), 0)


def cache_gap(name: str, device, dtype, new_tokens: int = 4, num_steps: int = 3) -> tuple[float, str]:
    """Largest relative gap between cached and uncached logits (and their dtype): the prompt,
    then one new position per pass with fresh noise for it only (tests/test_kv_cache.py's way)."""
    objective, model = build(name, device)
    model.eval()
    if name == "diffusion_blocks":
        for n, p in model.named_parameters():
            if ".ada." in n:  # a trained-looking denoiser: σ actually changes the computation
                torch.nn.init.normal_(p, std=0.1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, KERNEL_MODEL["vocab_size"], (3, 6), generator=g).to(device)
    noise = objective.noise(model, 3, ids.shape[1], g)
    cache = KVCache()
    with autocast(device, dtype):
        logits = objective.logits(model, ids, num_steps, noise=noise, cache=cache)
        worst = rel_diff(logits, objective.logits(model, ids, num_steps, noise=noise))
        for _ in range(new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            step_noise = objective.noise(model, 3, 1, g)
            ids, noise = torch.cat([ids, nxt], 1), torch.cat([noise, step_noise], 1)
            logits = objective.logits(model, nxt, num_steps, noise=step_noise, cache=cache)
            full = objective.logits(model, ids, num_steps, noise=noise)
            worst = max(worst, rel_diff(logits[:, -1], full[:, -1]))
    return worst, str(logits.dtype).removeprefix("torch.")


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process (0: the compiled path never ran)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def variants(name: str, backend: str, compile_core: bool) -> dict[str, dict]:
    """Model options whose loss must equal the plain model's; compile_core last, as the slowest."""
    out = {"loss_chunk": {"loss_chunk": 48}}  # 48 does not divide 4×64 positions: a short last chunk
    if name == "bptt":  # only the latent recurrence checkpoints its grad iterations
        out["checkpoint_core"] = {"checkpoint_core": True}
    if backend == "xformers":
        out["sdpa"] = {"attention": "sdpa"}
    if compile_core:
        out["compile_core"] = {"compile_core": True}
    return out


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def check_attention(rep: Report, device: torch.device) -> str:
    backend = select_attention_backend("auto", device)
    used = build("bptt", device)[1].core.layers[0].attn.backend(device)  # what the model's blocks run
    rep.data["attention"] = {"auto": backend, "model": used, "xformers_importable": xformers_available()}
    if device.type != "cuda":
        rep.check(backend == used == "sdpa", "kernels.attention", f"auto picked {backend} on CPU")
        rep.add("SKIP", "kernels.xformers", "no CUDA: xformers has no CPU kernels")
    elif xformers_available():
        # why auto passed an importable xformers over (its probe call), where the code says
        problem = getattr(attention, "xformers_problem", lambda _: None)(device.type)
        detail = f"auto picked {backend} (model blocks: {used})" + (f": {problem}" if problem else "")
        rep.check(backend == used == "xformers", "kernels.attention", detail)
    else:
        rep.check(backend == used == "sdpa", "kernels.attention", f"auto picked {backend}")
        rep.add("SKIP", "kernels.xformers", "`import xformers.ops` fails here: pip install xformers (matching torch)")
    return backend


def check_cache(rep: Report, device: torch.device) -> None:
    """fp32 is the exact check; bf16 autocast is how lm-eval decodes on a GPU."""
    for name in KERNEL_OBJECTIVES:
        for dt in (torch.float32, torch.bfloat16):
            label = f"kernels.{name}.cache.{str(dt).removeprefix('torch.')}"
            try:
                gap, got = cache_gap(name, device, dt)
            except Exception as err:
                rep.add("FAIL", label, _error(err))
                continue
            rep.data[label] = gap
            tol = TOLERANCE[dt][2]
            rep.check(gap <= tol, label, f"cached vs uncached logits rel {gap:.1e} ≤ {tol:g} ({got} logits)")


def check_variants(rep: Report, device: torch.device, dtype: torch.dtype, backend: str, compile_core: bool) -> None:
    loss_tol, grad_tol, _ = TOLERANCE[dtype]
    for name in KERNEL_OBJECTIVES:
        step = deep_step(name)
        try:
            base_loss, base_gn = train_pass(name, device, dtype, step)
        except Exception as err:
            rep.add("FAIL", f"kernels.{name}.plain", _error(err))
            continue
        rep.data[f"{name}.plain"] = {"loss": base_loss, "grad_norm": base_gn, "step": step}
        for label, opts in variants(name, backend, compile_core).items():
            try:
                loss, gn = train_pass(name, device, dtype, step, **opts)
            except Exception as err:
                rep.add("FAIL", f"kernels.{name}.{label}", _error(err))
                continue
            dl, dg = abs(loss - base_loss) / abs(base_loss), abs(gn - base_gn) / base_gn
            rep.data[f"{name}.{label}"] = {"loss": loss, "grad_norm": gn, "rel_loss": dl, "rel_grad_norm": dg}
            ok = dl <= loss_tol and dg <= grad_tol
            detail = (
                f"loss {loss:.5f} vs {base_loss:.5f} (rel {dl:.1e} ≤ {loss_tol:g}), "
                f"grad norm rel {dg:.1e} ≤ {grad_tol:g}, {str(dtype).removeprefix('torch.')}"
            )
            if label == "compile_core":  # an equal loss proves nothing if the eager core ran
                graphs = compiled_graphs()
                ok, detail = ok and graphs > 0, f"{detail}; {graphs} graphs compiled so far"
            rep.check(ok, f"kernels.{name}.{label}", detail)
    if not compile_core:
        rep.add("SKIP", "kernels.compile_core", "--no-compile")


def kernels(args) -> Report:
    rep = Report()
    device = device_for(args.cpu)
    if args.cpu:
        torch.set_num_threads(1)
    backend = check_attention(rep, device)
    check_cache(rep, device)
    check_variants(rep, device, pick_dtype(args.precision, device), backend, not args.no_compile)
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("check", choices=("env", "bf16", "kernels"))
    ap.add_argument("--cpu", action="store_true", help="run on CPU (bf16 under CPU autocast, tiny sizes)")
    ap.add_argument("--json", help="also write the lines and measurements here")
    ap.add_argument("--out", default="runs/gpu-smoke/b-bf16", help="bf16: run directories go here")
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "demo-db.yaml"), help="bf16: the recipe")
    ap.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), help="bf16: objectives (default: all)")
    ap.add_argument("--override", action="append", default=[], help="bf16: one more dotted.key=value")
    ap.add_argument("--no-compile", action="store_true", help="kernels: skip the compile_core check")
    ap.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="kernels: auto = bf16 on CUDA, fp32 on CPU",
    )
    args = ap.parse_args(argv)
    if args.cpu:  # before anything asks CUDA: DeepSpeed and the trainer would take the GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    unknown = set(args.objectives) - set(OBJECTIVES)
    if unknown:
        ap.error(f"unknown objectives {sorted(unknown)}; registered: {', '.join(OBJECTIVES)}")
    rep = {"env": env, "bf16": bf16, "kernels": kernels}[args.check](args)
    rep.dump(args.json)
    if torch.distributed.is_initialized():  # bf16 joined a world of one
        torch.distributed.destroy_process_group()
    return 1 if rep.failed else 0


if __name__ == "__main__":
    code = main()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    # skip interpreter finalisation: DeepSpeed's and gloo's threads can abort it (see train.exit_now)
    os._exit(code)
