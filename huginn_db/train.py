"""Trainer: one recipe → model + objective + data → DeepSpeed engine → run directory.

    huginn-db train RECIPE.yaml [dotted.key=value ...]
    deepspeed --module huginn_db.train RECIPE.yaml [...]      # same module under the launcher

The run directory holds config.yaml (resolved), metrics.jsonl (one object per logged step),
checkpoints/ (DeepSpeed) and eval/final.json (answer accuracy per test-time depth).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import random
import resource
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from huginn_db.checkpoint import (TMP_PREFIX, CheckpointError, find_checkpoint, publish, read_manifest,
                                  remove_partial)
from huginn_db.compute import train_flops
from huginn_db.config import ConfigError, RunConfig, check_deepspeed_json, load_config, to_dict
from huginn_db.data.reasoning import ReasoningCorpus
from huginn_db.data.text import TextCorpus
from huginn_db.evaluate import format_accuracy_table, reasoning_accuracy, text_validation
from huginn_db.model import RecurrentDepthLM
from huginn_db.objectives import OBJECTIVES

log = logging.getLogger("huginn_db")


def build_objective(cfg: RunConfig):
    cls, _ = OBJECTIVES[cfg.objective.name]
    return cls(cfg.objective_config(), seed=cfg.seed)


def build_model(cfg: RunConfig, objective, vocab_size: int) -> RecurrentDepthLM:
    mc = cfg.model
    if mc.vocab_size != vocab_size:
        mc.vocab_size = vocab_size  # the tokenizer decides; recorded in config.yaml
    mc.sigma_conditioning = objective.sigma_conditioning
    return RecurrentDepthLM(mc)


def build_corpus(cfg: RunConfig):
    if cfg.data.name == "text":
        try:
            return TextCorpus(cfg.data.text, cfg.seed)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(str(err)) from None
    try:
        corpus = ReasoningCorpus(cfg.data.reasoning, cfg.seed)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    need = corpus.max_length(cfg.data.reasoning.test_difficulties)
    if need > cfg.model.context:
        raise ConfigError(f"model.context={cfg.model.context} is shorter than the longest reasoning example ({need} tokens); raise model.context")
    return corpus


def evaluate(cfg: RunConfig, objective, model, corpus, device, num_steps: list[int] | None = None,
             examples: int | None = None) -> dict:
    """Scores per test-time depth: answer accuracy (reasoning) or validation loss (text).

    `examples` caps the reasoning test set per difficulty (in-training evaluation)."""
    num_steps = num_steps or cfg.eval.num_steps
    if cfg.data.name == "text":
        return {"validation": text_validation(objective, model, corpus, num_steps, cfg.train.micro_batch_size,
                                              cfg.eval.max_val_batches, seed=cfg.seed, device=device)}
    return {"accuracy": reasoning_accuracy(objective, model, corpus, num_steps, cfg.eval.batch_size,
                                           seed=cfg.seed, device=device, limit=examples)}


def deepspeed_config(cfg: RunConfig, world_size: int) -> dict:
    ds = check_deepspeed_json(cfg, world_size)  # ConfigError where the JSON contradicts the recipe
    t = cfg.train
    ds["train_micro_batch_size_per_gpu"] = t.micro_batch_size
    ds["gradient_accumulation_steps"] = t.grad_accum
    ds["train_batch_size"] = t.micro_batch_size * t.grad_accum * world_size
    ds["gradient_clipping"] = t.grad_clip
    ds.setdefault("steps_per_print", 10**9)  # we log ourselves
    ds.setdefault("zero_allow_untested_optimizer", True)  # SkippableAdamW is AdamW plus a skip flag
    return ds


def lr_lambda(cfg: RunConfig):
    t = cfg.train

    def f(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        p = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))

    return f


def param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "wte" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls beat fp32 here: CUDA, or a CPU with native bf16 dot products."""
    if device.type == "cuda":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_context(precision: str, device: torch.device):
    use_bf16 = precision == "bf16" or (precision == "auto" and fast_bf16(device))
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: peak allocated by torch; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class NonFinite(RuntimeError):
    """A non-finite loss or gradient past train.skip_nonfinite: the run stops before the update."""


class RankFailure(RuntimeError):
    """A collective failed: another rank died or did not answer within train.dist_timeout."""


def _comm_failure(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, torch.distributed.DistError) or any(
        m in text for m in ("gloo", "Connection closed", "Connection reset", "Timed out", "NCCL"))


def agree(value: float, op=torch.distributed.ReduceOp.MAX, device: torch.device | str = "cpu") -> float:
    """All ranks' reduction of one number (a collective; a CUDA tensor under NCCL)."""
    t = torch.tensor(float(value), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=op)
    return t.item()


class SkippableAdamW(torch.optim.AdamW):
    """AdamW whose update the trainer can veto for a step: parameters and moments stay as they
    were. DeepSpeed's ZeRO wrappers call it once per group / partition on every rank, so one flag
    set on every rank skips the whole update at any stage."""

    skip = False

    def step(self, closure=None):
        return None if self.skip else super().step(closure)


class NonFiniteGuard:
    """Flags non-finite gradients as the backward produces them: a hook per parameter runs
    before DeepSpeed reduces or partitions the gradient, so detection is the same at every
    ZeRO stage (a non-finite gradient makes the gradient norm non-finite)."""

    def __init__(self, module: torch.nn.Module):
        self.flags: list[torch.Tensor] = []
        self.handles = [p.register_hook(self._hook) for p in module.parameters() if p.requires_grad]

    def _hook(self, grad):
        self.flags.append(torch.isfinite(grad).all())

    def bad(self) -> bool:
        """This rank's verdict since the last call (local; combine with `agree`)."""
        flags, self.flags = self.flags, []
        return bool(flags) and not bool(torch.stack(flags).all())


class Preemption:
    """SIGTERM/SIGINT (cluster preemption, Ctrl-C) ask for a checkpoint at the next step end."""

    def __init__(self):
        self.requested = False
        self._old = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handler(self, signum, frame):
        self.requested = True

    def agreed(self, device="cpu") -> bool:
        """True on every rank once any rank was signalled (a collective)."""
        return bool(agree(self.requested, device=device))

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def init_distributed(timeout: float = 1800.0) -> None:
    """Lets a bare `python -m huginn_db.train` run as a world of one (no launcher, no MPI).

    timeout: seconds a collective waits for the other ranks before it raises (train.dist_timeout).
    """
    import deepspeed

    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(port)))
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                   timeout=datetime.timedelta(seconds=timeout))


def prepare_run_dir(cfg: RunConfig, rank: int) -> Path:
    """Create the run directory; refuse to clobber an existing run unless asked to."""
    run = Path(cfg.run_dir)
    if rank == 0:
        exists = (run / "metrics.jsonl").exists()
        if exists and not (cfg.overwrite or cfg.resume == "auto"):
            raise ConfigError(f"run_dir {run} already holds a run; pass resume=auto, overwrite=true or another run_dir=")
        if cfg.overwrite:
            shutil.rmtree(run / "checkpoints", ignore_errors=True)
            (run / "metrics.jsonl").unlink(missing_ok=True)
        run.mkdir(parents=True, exist_ok=True)
        (run / "metrics.jsonl").touch()
        (run / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return run


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records past `step`: a killed run may have logged steps its last checkpoint lacks."""
    keep = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= step]
    path.write_text("".join(l + "\n" for l in keep))


def zero_stage(engine) -> int:
    return int(engine.zero_optimization_stage())


def evaluation_model(engine, cfg: RunConfig, rank: int):
    """The trained module, hook-free: under ZeRO-3 a full copy gathered onto rank 0.

    A collective under ZeRO-3 (every rank must call it); other ranks get None.
    """
    if zero_stage(engine) != 3:
        return engine.module
    import deepspeed

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        state = {k: v.detach().clone() for k, v in engine.module.state_dict().items()} if rank == 0 else None
    if rank != 0:
        return None
    model = RecurrentDepthLM(cfg.model)
    model.load_state_dict(state)
    return model.to(engine.device)


def save(engine, run: Path, step: int, tokens: int, flops: float, corpus, cfg: RunConfig, world: int,
         skipped: int = 0) -> None:
    """Atomic checkpoint (see huginn_db.checkpoint): every rank writes .tmp-stepN/, rank 0
    publishes it. On failure (full disk, I/O error) the partial directory is removed, `latest`
    still names the previous checkpoint, and CheckpointError stops the run."""
    client = {"step": step, "tokens": tokens, "flops": flops, "skipped": skipped, "torch_rng": torch.get_rng_state(),
              "numpy_rng": np.random.get_state(), "python_rng": random.getstate()}
    if hasattr(corpus, "position"):
        client["data"] = corpus.position(step, cfg.train.grad_accum, world, cfg.train.micro_batch_size)
    ckpt, tag, rank = run / "checkpoints", f"step{step}", torch.distributed.get_rank()
    error = None
    try:
        engine.save_checkpoint(str(ckpt), tag=TMP_PREFIX + tag, client_state=client, save_latest=False)
    except Exception as err:  # torch.save reports a full disk as RuntimeError, Python as OSError
        error = err
    ok = agree(error is None, torch.distributed.ReduceOp.MIN, engine.device)
    if ok and rank == 0:
        try:
            publish(ckpt, tag, {"step": step, "world_size": world, "zero_stage": zero_stage(engine)})
        except OSError as err:
            error, ok = err, False
    if not agree(ok, torch.distributed.ReduceOp.MIN, engine.device):
        if rank == 0:
            shutil.rmtree(ckpt / (TMP_PREFIX + tag), ignore_errors=True)
        prev, _ = find_checkpoint(ckpt) if rank == 0 else (None, [])
        reason = str(error).splitlines()[0] if error else "it failed on another rank"
        raise CheckpointError(f"could not write the checkpoint of step {step} ({reason}); "
                              + (f"{ckpt / prev} is intact and `latest` names it" if prev else "no earlier checkpoint exists"))


def resume_point(cfg: RunConfig, run: Path, world: int, stage: int) -> str | None:
    """The checkpoint tag to resume from (resume=auto), agreed by every rank (a collective).

    Rank 0 drops unfinished saves and picks the newest complete checkpoint, passing over
    damaged ones with a warning. Refused (ConfigError): checkpoints exist but none is complete,
    or the world size changed under ZeRO >= 1 (optimizer state is sharded per rank)."""
    box = [None, [], None]  # tag, warnings, error
    ckpt = run / "checkpoints"
    if torch.distributed.get_rank() == 0 and cfg.resume == "auto" and ckpt.is_dir():
        remove_partial(ckpt)
        tag, passed = find_checkpoint(ckpt)
        box[:2] = tag, passed
        if tag is None and passed:
            box[2] = (f"no complete checkpoint in {ckpt} ({passed[0]}); "
                      f"pass overwrite=true to start again or restore the files")
        elif tag is not None:
            meta = read_manifest(ckpt / tag)
            was, was_stage = meta.get("world_size", world), meta.get("zero_stage", stage)
            if was != world and max(was_stage, stage) > 0:
                box[2] = (f"checkpoint {tag} was written by {was} ranks under ZeRO-{was_stage}, this run has {world} "
                          f"under ZeRO-{stage}: sharded optimizer state cannot be re-split; resume with {was} "
                          f"processes, or start from its weights (huginn-db export) in a new run_dir")
    torch.distributed.broadcast_object_list(box, src=0)
    tag, passed, error = box
    if error:
        raise ConfigError(error)
    for line in passed:
        log.warning("skipping checkpoint: %s", line)
    return tag


def train(cfg: RunConfig, progress: bool = True) -> dict:
    """Run (or resume) one training job; returns the final summary (also written to the run dir)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    init_distributed(cfg.train.dist_timeout)
    at = {"step": 0}  # where a failed collective happened, for the message
    try:
        return _train(cfg, progress, at)
    except (ConfigError, NonFinite, CheckpointError):
        raise
    except RuntimeError as err:
        if not _comm_failure(err):
            raise
        raise RankFailure(f"lost contact with another rank at step {at['step']} (a process died, or a collective "
                          f"waited longer than train.dist_timeout={cfg.train.dist_timeout:g}s): "
                          f"{str(err).strip().splitlines()[0][:200]}; continue with resume=auto") from None


def _train(cfg: RunConfig, progress: bool, at: dict) -> dict:
    import deepspeed
    from tqdm import tqdm

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.manual_seed(cfg.seed)
    objective = build_objective(cfg)
    corpus = build_corpus(cfg)
    model = build_model(cfg, objective, corpus.tokenizer.vocab_size)
    # every check that can refuse the run happens before the run directory is touched
    try:  # a corpus too small for one micro-batch fails here, not mid-run
        corpus.train_batch(cfg.train.micro_batch_size, 0, 0, rank, world, cfg.train.grad_accum)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    ds_config = deepspeed_config(cfg, world)
    stage = int((ds_config.get("zero_optimization") or {}).get("stage", 0))
    resume_tag = resume_point(cfg, Path(cfg.run_dir), world, stage)
    run = prepare_run_dir(cfg, rank)
    if rank == 0:
        corpus.tokenizer.save(run)

    n_params = model.num_parameters()  # before ZeRO-3 partitions the tensors
    if cfg.model.compile_core:
        model.compile_core()
    optimizer = SkippableAdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr,
                               betas=(cfg.train.beta1, cfg.train.beta2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    if zero_stage(engine) == 3:
        # the tied head and the DB targets read wte.weight outside nn.Embedding.forward
        deepspeed.zero.register_external_parameter(engine.module, engine.module.wte.weight)
    device = engine.device
    autocast = autocast_context(cfg.train.precision, device)
    guard = NonFiniteGuard(engine.module)

    start, tokens, flops, skipped = 0, 0, 0.0, 0
    if resume_tag is not None:
        _, client = engine.load_checkpoint(str(run / "checkpoints"), tag=resume_tag)
        start, tokens, flops = client["step"], client["tokens"], client["flops"]
        skipped = client.get("skipped", 0)
        torch.set_rng_state(client["torch_rng"])
        np.random.set_state(client["numpy_rng"])
        random.setstate(client["python_rng"])
        log.info("resumed from %s (step %d)", resume_tag, start)
    at["step"] = start
    if rank == 0:
        truncate_metrics(run / "metrics.jsonl", start)
        log.info("objective=%s params=%s world=%d zero=%d", objective.name, n_params["total"],
                 world, zero_stage(engine))

    metrics = (run / "metrics.jsonl").open("a") if rank == 0 else None
    rss_before = peak_memory_bytes(device)  # CPU: what model, engine and data already hold
    t_start = time.perf_counter()
    bar = tqdm(range(start, cfg.train.max_steps), initial=start, total=cfg.train.max_steps,
               disable=not progress or rank != 0, desc=objective.name,
               mininterval=0.5 if sys.stderr.isatty() else 30)  # keep piped logs short
    window = []
    preemption = Preemption()
    ckpt_dir = run / "checkpoints"

    def stop(step: int, part: str) -> NonFinite:
        last, _ = find_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else (None, [])
        policy = (f"after skipping {skipped} step(s), the train.skip_nonfinite={cfg.train.skip_nonfinite} allowed"
                  if cfg.train.skip_nonfinite else "train.skip_nonfinite=0")
        return NonFinite(f"{part} became non-finite at step {step} ({policy}); the run stopped before the "
                         f"update; last good checkpoint: {ckpt_dir / last if last else 'none'}")

    for step in bar:
        at["step"] = step + 1
        t0, flops0, tokens0 = time.perf_counter(), flops, tokens
        bad_part = None
        for micro in range(cfg.train.grad_accum):
            batch = corpus.train_batch(cfg.train.micro_batch_size, step, micro, rank, world, cfg.train.grad_accum)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                loss, stats = objective.loss(engine, batch, step, (step * cfg.train.grad_accum + micro) * world + rank)
            # every rank must agree before backward, or the gradient all-reduce would hang
            if agree(not torch.isfinite(loss.detach()), device=device):
                bad_part = bad_part or f"loss (micro-batch {micro})"
                if skipped >= cfg.train.skip_nonfinite:
                    raise stop(step + 1, bad_part)
            engine.backward(loss)  # a skipped step still runs backward: DeepSpeed counts micro-steps
            if micro == cfg.train.grad_accum - 1 and agree(guard.bad(), device=device):
                bad_part = bad_part or "gradient norm"
                if skipped >= cfg.train.skip_nonfinite:
                    raise stop(step + 1, bad_part)
            optimizer.skip = bad_part is not None
            engine.step()
            optimizer.skip = False
            if micro == cfg.train.grad_accum - 1 and not engine.was_step_applied():
                # DeepSpeed's own overflow check skipped it (ZeRO-1/2 test the gradient norm) and
                # left the LR schedule behind: keep the schedule on the step count, as when we skip
                scheduler.step()
                bad_part = bad_part or "gradient norm"
            tokens += batch["input_ids"].numel() * world
            # analytic FLOPs of this micro-step on every rank (BPTT: at the r actually drawn)
            flops += world * train_flops(cfg.model, cfg.objective_config(), *batch["input_ids"].shape,
                                         r=stats.get("r"))["total"]
            if math.isfinite(loss.item()):  # a skipped step's finite loss is still logged
                window.append(loss.item())
        if bad_part is not None:
            skipped += 1
            if skipped > cfg.train.skip_nonfinite:  # only where DeepSpeed skipped before we saw it
                skipped -= 1
                raise stop(step + 1, bad_part)
            log.warning("step %d: %s non-finite, update skipped (%d of train.skip_nonfinite=%d)",
                        step + 1, bad_part, skipped, cfg.train.skip_nonfinite)
        dt = time.perf_counter() - t0
        done = step + 1
        if done % cfg.train.log_every == 0 or done == cfg.train.max_steps:
            # the logged loss is the mean over every rank's finite micro-batch losses (a collective)
            total = agree(sum(window), torch.distributed.ReduceOp.SUM, device)
            count = agree(len(window), torch.distributed.ReduceOp.SUM, device)
            window = []
            if rank == 0:
                rec = {"step": done, "loss": total / count if count else None, "tokens": tokens, "flops": flops,
                       "seconds": dt, "tokens_per_s": (tokens - tokens0) / dt, "elapsed": time.perf_counter() - t_start,
                       "lr": engine.get_lr()[0], "peak_memory_bytes": peak_memory_bytes(device),
                       "peak_memory_delta_bytes": peak_memory_bytes(device) - rss_before, "skipped": skipped, **stats}
                grad_norm = engine.get_global_grad_norm()
                if grad_norm is not None and math.isfinite(float(grad_norm)):
                    rec["grad_norm"] = float(grad_norm)
                if cfg.train.peak_flops:  # model FLOPs utilisation of this step, per rank
                    rec["mfu"] = (flops - flops0) / world / dt / cfg.train.peak_flops
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                if rec["loss"] is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", refresh=False)
        if cfg.eval.every and done % cfg.eval.every == 0 and done < cfg.train.max_steps:
            model_eval = evaluation_model(engine, cfg, rank)  # collective under ZeRO-3
            if rank == 0:
                with autocast:
                    scores = evaluate(cfg, objective, model_eval, corpus, device, [objective.default_num_steps],
                                      cfg.eval.every_examples)
                metrics.write(json.dumps({"step": done, "tokens": tokens, **scores}) + "\n")
                metrics.flush()
        if cfg.train.save_every and done % cfg.train.save_every == 0 and done < cfg.train.max_steps:
            save(engine, run, done, tokens, flops, corpus, cfg, world, skipped)
        if done < cfg.train.max_steps and preemption.agreed(device):
            save(engine, run, done, tokens, flops, corpus, cfg, world, skipped)
            log.warning("signal received: checkpoint saved at step %d; continue with resume=auto", done)
            preemption.restore()
            torch.distributed.barrier()
            return {"objective": objective.name, "steps": done, "preempted": True}
    preemption.restore()

    train_seconds = time.perf_counter() - t_start
    if start < cfg.train.max_steps or resume_tag is None:
        save(engine, run, cfg.train.max_steps, tokens, flops, corpus, cfg, world, skipped)
    summary = {"objective": objective.name, "steps": cfg.train.max_steps, "tokens": tokens, "train_flops": flops,
               "train_seconds": train_seconds, "skipped_steps": skipped, "params": n_params}
    model = evaluation_model(engine, cfg, rank) if cfg.eval.num_steps else None
    if rank == 0:
        if model is not None:
            with autocast:
                summary.update(evaluate(cfg, objective, model, corpus, device))
        last = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in last if "loss" in r]
        summary["final_loss"] = losses[-1] if losses else None
        (run / "eval").mkdir(exist_ok=True)
        (run / "eval" / "final.json").write_text(json.dumps(summary, indent=2))
    if metrics:
        metrics.close()
    torch.distributed.barrier()
    return summary


# the CLI's answer to each way a run can fail (README: "When things go wrong")
EXIT_CODES = {ConfigError: 2, NonFinite: 3, CheckpointError: 4, RankFailure: 5}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [a for a in argv if not a.startswith("--local_rank")]  # injected by the launcher
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = load_config(argv[0], argv[1:])
        summary = train(cfg)
    except tuple(EXIT_CODES) as err:
        print(f"huginn-db: error: {err}", file=sys.stderr)
        return EXIT_CODES[type(err)]
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if "final_loss" in summary:
        print(f"{summary['objective']}: final loss {summary['final_loss']:.4f}, "
              f"{summary['tokens']} tokens in {summary['train_seconds']:.1f}s")
        if summary.get("accuracy") or summary.get("validation"):
            print(format_accuracy_table(summary.get("accuracy") or summary["validation"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
