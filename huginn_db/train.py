"""Trainer: one recipe → model + objective + data → DeepSpeed engine → run directory.

    huginn-db train RECIPE.yaml [dotted.key=value ...] [--print-config]
    deepspeed --module huginn_db.train RECIPE.yaml [...]      # same module under the launcher

The run directory holds config.yaml (resolved), metrics.jsonl (one object per logged step),
checkpoints/ (DeepSpeed) and eval/final.json (answer accuracy per test-time depth).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from huginn_db import machine
from huginn_db.components.checkpointer import Checkpointer, Progress
from huginn_db.components.distributed import Preemption, comm_failure, init_distributed
from huginn_db.components.engine import build_engine, config_stage, deepspeed_config, evaluation_model, zero_stage
from huginn_db.components.guard import StepGuard
from huginn_db.components.loader import micro_batch_loader
from huginn_db.components.metrics import MetricsWriter, mfu_peak, prepare_run_dir
from huginn_db.components.optim import build_optimizer
from huginn_db.components.precision import autocast_context, autocast_dtype
from huginn_db.compute import train_flops
from huginn_db.config import RunConfig, resolve
from huginn_db.data import build_corpus
from huginn_db.errors import CheckpointError, ConfigError, NonFinite, RankFailure, guarded
from huginn_db.evaluate import evaluate
from huginn_db.model import RecurrentDepthLM
from huginn_db.objectives import build_objective
from huginn_db.objectives.base import Objective

log = logging.getLogger("huginn_db")


@dataclass
class Trainer:
    """Everything one training job holds; built by `setup`, run by `train`."""

    cfg: RunConfig
    run: Path
    rank: int
    world: int
    objective: object
    corpus: object
    engine: object
    optimizer: object
    scheduler: object
    guard: StepGuard
    checkpointer: Checkpointer
    metrics: MetricsWriter
    progress: Progress
    resumed: bool
    params: dict
    preemption: Preemption = field(default_factory=lambda: Preemption(install=False))  # `train` arms one
    batches: Iterator | None = None  # the loader `train` starts (None: batches built in the step)
    data_wait: float = 0.0  # seconds the last step waited for its micro-batches

    def train_step(self, step: int) -> dict:
        """One optimizer step over grad_accum micro-batches; returns the last micro-batch's stats.

        Outside log steps the host waits for the device once per step: the guard's check
        between the last backward and the update (losses, stats and FLOPs stay or are counted
        without reading the device)."""
        cfg, engine, p = self.cfg, self.engine, self.progress
        accum = cfg.train.grad_accum
        self.guard.begin(step + 1)
        self.data_wait = 0.0
        for micro in range(accum):
            t0 = time.perf_counter()
            batch = self.next_batch(step, micro)
            self.data_wait += time.perf_counter() - t0
            batch = to_device(batch, engine.device)
            loss, stats = self.objective.loss(engine, batch, step, (step * accum + micro) * self.world + self.rank)
            self.guard.watch_loss(loss)
            engine.backward(loss)  # a skipped step still runs backward: DeepSpeed counts micro-steps
            if micro == accum - 1:
                self.guard.check(self.preemption.requested)
                if self.guard.veto:
                    self.objective.skipped_step(engine, step)
            self.optimizer.skip = self.guard.veto
            engine.step()
            self.optimizer.skip = False
            if micro == accum - 1 and not engine.was_step_applied():
                # DeepSpeed's own overflow check skipped it and left the LR schedule behind: keep
                # the schedule on the step count, as when we skip
                self.scheduler.step()
                self.guard.deepspeed_skipped()
            p.tokens += batch["input_ids"].numel() * self.world
            # analytic FLOPs of this micro-step on every rank (BPTT: at the r actually drawn)
            p.flops += (
                self.world
                * train_flops(cfg.model, cfg.objective_config(), *batch["input_ids"].shape, r=stats.get("r"))["total"]
            )
            self.metrics.add_loss(loss)
        self.guard.end()
        p.step, p.skipped = step + 1, self.guard.skipped
        return stats

    def next_batch(self, step: int, micro: int) -> dict:
        """Micro-batch `micro` of `step`: from the loader where `train` started one (built ahead,
        in worker processes), else built here; an objective that keeps examples across steps
        builds its own."""
        if self.batches is None:
            return self.objective.train_batch(
                self.corpus,
                self.cfg.train.micro_batch_size,
                step,
                micro,
                self.rank,
                self.world,
                self.cfg.train.grad_accum,
            )
        batch = next(self.batches)
        if batch.pop("micro_batch") != step * self.cfg.train.grad_accum + micro:
            raise RuntimeError(f"the loader is out of step with the trainer at step {step}, micro-batch {micro}")
        return batch

    def start_loader(self) -> None:
        """Micro-batches from the current step on, built ahead by data.workers processes."""
        if type(self.objective).train_batch is not Objective.train_batch:
            return  # it keeps examples across steps (deep supervision): built in the step
        workers = self.cfg.data.workers
        if workers is None:
            workers = 2 if self.engine.device.type == "cuda" else 0
        loader = micro_batch_loader(
            self.corpus,
            self.cfg.train,
            self.rank,
            self.world,
            self.progress.step,
            workers,
            self.engine.device.type == "cuda",
        )
        self.batches = iter(loader)

    def evaluate(self, num_steps=None, examples=None, difficulties=None) -> dict | None:
        """Scores of the current weights on rank 0 (a collective under ZeRO-3)."""
        model = evaluation_model(self.engine, self.cfg, self.rank)
        if self.rank != 0:
            return None
        with autocast_context(self.cfg.train.precision, self.engine.device):
            return evaluate(
                self.cfg, self.objective, model, self.corpus, self.engine.device, num_steps, examples, difficulties
            )


def to_device(batch: dict, device: torch.device) -> dict:
    """A micro-batch's tensors on the training device (without blocking the host where the
    loader pinned them); other values (an objective's host bookkeeping) as they are."""
    return {k: v.to(device, non_blocking=v.is_pinned()) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def setup(cfg: RunConfig) -> Trainer:
    """Build model, objective, data and engine, and resume; every check that can refuse the run
    happens before the run directory is touched."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.manual_seed(cfg.seed)
    objective = build_objective(cfg.objective.name, cfg.objective_config(), cfg.seed)
    t0 = time.perf_counter()
    corpus = build_corpus(cfg.data, cfg.seed, cfg.model.context)
    data_seconds = time.perf_counter() - t0  # the part of start-up a prepared set saves
    cfg = resolve(cfg, corpus.tokenizer.vocab_size)
    model = RecurrentDepthLM(cfg.model)
    try:  # a corpus too small for one micro-batch fails here, not mid-run
        corpus.train_batch(cfg.train.micro_batch_size, 0, 0, rank, world, cfg.train.grad_accum)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    ds_config = deepspeed_config(cfg, world)
    checkpointer = Checkpointer(Path(cfg.run_dir), cfg, world, objective)
    resume_tag = checkpointer.resume_point(config_stage(ds_config))
    if checkpointer.universal:  # another world size under ZeRO: DeepSpeed re-splits the state
        ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
    if cfg.init_from and resume_tag is None:  # a resumed run continues from its own checkpoint
        from huginn_db.interop import initial_weights

        initial_weights(model, cfg.init_from)
    run = prepare_run_dir(cfg, rank)
    if rank == 0:
        corpus.tokenizer.save(run)

    params = model.num_parameters()  # before ZeRO-3 partitions the tensors
    if cfg.model.compile_core:
        model.compile_core()
    optimizer, scheduler = build_optimizer(model, cfg.train)
    engine = build_engine(model, optimizer, scheduler, ds_config)
    engine.module.autocast_dtype = autocast_dtype(cfg.train.precision, engine.device)
    progress = checkpointer.load(engine, resume_tag) if resume_tag is not None else Progress()
    if rank == 0:
        log.info(
            "objective=%s params=%s world=%d zero=%d data=%.3fs",
            objective.name,
            params["total"],
            world,
            zero_stage(engine),
            data_seconds,
        )
    if rank == 0:
        machine.record(run, machine.describe(engine.device, world, progress.step))
    peak = mfu_peak(cfg.train, engine.device, say=rank == 0)
    metrics = MetricsWriter(run, rank, engine.device, world, peak, progress.step, engine.monitor)
    guard = StepGuard(engine.module, cfg.train.skip_nonfinite, checkpointer.dir, engine.device, progress.skipped)
    return Trainer(
        cfg,
        run,
        rank,
        world,
        objective,
        corpus,
        engine,
        optimizer,
        scheduler,
        guard,
        checkpointer,
        metrics,
        progress,
        resume_tag is not None,
        params,
    )


def train(cfg: RunConfig, progress: bool = True) -> dict:
    """Run (or resume) one training job; returns the final summary (also written to the run dir)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    init_distributed(cfg.train.dist_timeout)
    at = Progress()  # where a failed collective happened, for the message
    try:
        t = setup(cfg)
        at = t.progress
        return _loop(t, progress)
    except (ConfigError, NonFinite, CheckpointError):
        raise
    except RuntimeError as err:
        if not comm_failure(err):
            raise
        raise RankFailure(
            f"lost contact with another rank at step {at.step + 1} (a process died, or a collective "
            f"waited longer than train.dist_timeout={cfg.train.dist_timeout:g}s): "
            f"{str(err).strip().splitlines()[0][:200]}; continue with resume=auto"
        ) from None


def _loop(t: Trainer, show_progress: bool) -> dict:
    from tqdm import tqdm

    cfg, p, tc = t.cfg, t.progress, t.cfg.train
    start = p.step
    bar = tqdm(
        range(start, tc.max_steps),
        initial=start,
        total=tc.max_steps,
        desc=t.objective.name,
        disable=not show_progress or t.rank != 0,
        mininterval=0.5 if sys.stderr.isatty() else 30,
    )  # keep piped logs short
    t.preemption = Preemption()
    t.start_loader()
    for step in bar:
        logged = (step + 1) % tc.log_every == 0 or step + 1 == tc.max_steps
        start_step = time.perf_counter()  # the window's time includes the device's lag the sync waits for
        if logged:  # a timed step starts and ends with an idle device (CUDA runs ahead of the host)
            synchronize(t.engine.device)
        t0, flops0, tokens0 = time.perf_counter(), p.flops, p.tokens
        stats = t.train_step(step)
        done = p.step
        if logged:
            synchronize(t.engine.device)
        end = time.perf_counter()
        t.metrics.add_step(end - start_step, p.tokens - tokens0, t.data_wait)
        if logged:
            rec = t.metrics.log(
                t.engine,
                done,
                p.tokens,
                p.flops,
                end - t0,
                p.tokens - tokens0,
                p.flops - flops0,
                p.skipped,
                stats,
            )
            if rec and rec["loss"] is not None:
                bar.set_postfix(loss=f"{rec['loss']:.3f}", refresh=False)
        if cfg.eval.every and done % cfg.eval.every == 0 and done < tc.max_steps:
            ev = cfg.eval
            scores = t.evaluate(
                ev.every_num_steps or [t.objective.default_num_steps], ev.every_examples, ev.every_difficulties
            )
            if scores is not None:  # FLOPs so far: the x axis of "training FLOPs to reach a target"
                t.metrics.write({"step": done, "tokens": p.tokens, "flops": p.flops, **scores}, section="eval")
        if tc.save_every and done % tc.save_every == 0 and done < tc.max_steps:
            t.checkpointer.save(t.engine, p, t.corpus)
        if done < tc.max_steps and t.guard.preempt:
            t.checkpointer.save(t.engine, p, t.corpus)
            log.warning("signal received: checkpoint saved at step %d; continue with resume=auto", done)
            t.preemption.restore()
            torch.distributed.barrier()
            return {"objective": t.objective.name, "steps": done, "preempted": True}
    t.preemption.restore()
    return _finish(t, start)


def _finish(t: Trainer, start: int) -> dict:
    """Final checkpoint, the trainer's own evaluation, eval/final.json."""
    cfg, p = t.cfg, t.progress
    train_seconds = t.metrics.elapsed()
    if start < cfg.train.max_steps or not t.resumed:
        p.step = cfg.train.max_steps
        t.checkpointer.save(t.engine, p, t.corpus)
    summary = {
        "objective": t.objective.name,
        "steps": cfg.train.max_steps,
        "tokens": p.tokens,
        "train_flops": p.flops,
        "train_seconds": train_seconds,
        "skipped_steps": p.skipped,
        "params": t.params,
    }
    scores = t.evaluate() if cfg.eval.num_steps else None
    if t.rank == 0:
        summary.update(scores or {})
        t.metrics.track(scores or {}, "final", cfg.train.max_steps)
        records = [json.loads(line) for line in (t.run / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in records if "loss" in r]
        summary["final_loss"] = losses[-1] if losses else None
        (t.run / "eval").mkdir(exist_ok=True)
        (t.run / "eval" / "final.json").write_text(json.dumps(summary, indent=2))
    t.metrics.close()
    torch.distributed.barrier()
    return summary


def main(argv: list[str] | None = None) -> int:
    """`huginn-db train` (also `python -m huginn_db.train` and the DeepSpeed launcher's module)."""
    return guarded(command, sys.argv[1:] if argv is None else argv)


def command(argv: list[str]) -> int:
    import yaml

    from huginn_db.config import load_config, to_dict
    from huginn_db.evaluate import format_accuracy_table

    argv = [a for a in argv if not a.startswith("--local_rank")]  # injected by the launcher
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ + "\nEvery key, its type and default: `huginn-db keys`.")
        return 0 if argv else 2
    show = "--print-config" in argv
    argv = [a for a in argv if a != "--print-config"]
    cfg = load_config(argv[0], argv[1:])
    if show:  # the resolved recipe, inheritance and overrides applied, as config.yaml would record it
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        summary = train(cfg)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if "final_loss" in summary:
        print(
            f"{summary['objective']}: final loss {summary['final_loss']:.4f}, "
            f"{summary['tokens']} tokens in {summary['train_seconds']:.1f}s"
        )
        if summary.get("accuracy") or summary.get("validation"):
            print(format_accuracy_table(summary.get("accuracy") or summary["validation"]))
    return 0


def exit_now(code: int) -> None:
    """End a launched rank without interpreter finalisation.

    After the last barrier and destroy_process_group everything is on disk; what is left is
    finalisation, where gloo's and DeepSpeed's C++ threads are destroyed in whatever order the
    interpreter frees them. A still-joinable std::thread there aborts the process ("terminate
    called without an active exception", SIGABRT), so a run that finished would report failure
    to its launcher. os._exit skips that teardown; the exit code is the run's.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":  # the launchers' entry (deepspeed --module, srun python -m)
    exit_now(main())
