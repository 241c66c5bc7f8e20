"""Checkpoints during training: atomic saves of the DeepSpeed engine plus the trainer's own
state (step, tokens, FLOPs, skipped steps, RNGs, data position), and where to resume.
The on-disk format and its checks are `huginn_db.checkpoint`'s."""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from huginn_db.checkpoint import (
    TMP_PREFIX,
    find_checkpoint,
    prune,
    publish,
    read_manifest,
    remove_partial,
    to_universal,
)
from huginn_db.components.distributed import agree
from huginn_db.components.engine import zero_stage
from huginn_db.components.optim import apply_schedule, schedule_change, schedule_state
from huginn_db.errors import CheckpointError, ConfigError

log = logging.getLogger("huginn_db")

OBJECTIVE_STATE = "objective-rank{rank}.pt"  # an objective's own state (Objective.state_dict)


@dataclass
class Progress:
    """What the trainer carries from step to step, and saves with each checkpoint."""

    step: int = 0
    tokens: int = 0
    flops: float = 0.0
    skipped: int = 0


class Checkpointer:
    def __init__(self, run: Path, cfg, world: int, objective=None):
        self.dir, self.cfg, self.world, self.objective = run / "checkpoints", cfg, world, objective
        tc = cfg.train
        self.global_batch = tc.micro_batch_size * tc.grad_accum * world
        self.universal = False  # resume_point: the checkpoint's ZeRO shards need re-splitting

    def save(self, engine, progress: Progress, corpus) -> None:
        """Every rank writes .tmp-stepN/, rank 0 publishes it. On failure (full disk, I/O error)
        the partial directory is removed, `latest` still names the previous checkpoint, and
        CheckpointError stops the run."""
        step = progress.step
        client = {
            "step": step,
            "tokens": progress.tokens,
            "flops": progress.flops,
            "skipped": progress.skipped,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
        }
        if hasattr(corpus, "position"):
            client["data"] = corpus.position(
                step, self.cfg.train.grad_accum, self.world, self.cfg.train.micro_batch_size
            )
        tag, rank = f"step{step}", torch.distributed.get_rank()
        error = None
        try:
            engine.save_checkpoint(str(self.dir), tag=TMP_PREFIX + tag, client_state=client, save_latest=False)
            state = self.objective.state_dict() if self.objective is not None else None
            if state is not None:  # per rank (DeepSpeed's client_state is rank 0's only); in the manifest
                torch.save(state, self.dir / (TMP_PREFIX + tag) / OBJECTIVE_STATE.format(rank=rank))
        except Exception as err:  # torch.save reports a full disk as RuntimeError, Python as OSError
            error = err
        ok = agree(error is None, torch.distributed.ReduceOp.MIN, engine.device)
        if ok and rank == 0:
            try:
                meta = {"step": step, "world_size": self.world, "zero_stage": zero_stage(engine)}
                # the schedule in the manifest: a resume checks it before touching the run directory
                meta["schedule"] = schedule_state(self.cfg.train)
                publish(self.dir, tag, {**meta, "global_batch": self.global_batch})
            except OSError as err:
                error, ok = err, False
        if not agree(ok, torch.distributed.ReduceOp.MIN, engine.device):
            if rank == 0:
                shutil.rmtree(self.dir / (TMP_PREFIX + tag), ignore_errors=True)
            prev, _ = find_checkpoint(self.dir) if rank == 0 else (None, [])
            reason = str(error).splitlines()[0] if error else "it failed on another rank"
            raise CheckpointError(
                f"could not write the checkpoint of step {step} ({reason}); "
                + (f"{self.dir / prev} is intact and `latest` names it" if prev else "no earlier checkpoint exists")
            )
        if rank == 0 and self.cfg.train.keep_last:
            self.prune()

    def prune(self) -> None:
        """Old checkpoints past train.keep_last deleted; a failure costs disk space, not the run."""
        tc = self.cfg.train
        try:
            gone = prune(self.dir, tc.keep_last, tc.keep_every)
        except OSError as err:
            log.warning("could not delete old checkpoints in %s: %s", self.dir, err)
            return
        if gone:
            log.info("deleted checkpoints %s (train.keep_last=%d)", ", ".join(gone), tc.keep_last)

    def resume_point(self, stage: int) -> str | None:
        """The checkpoint tag to resume from (resume=auto), agreed by every rank (a collective).

        Rank 0 drops unfinished saves and picks the newest complete checkpoint, passing over
        damaged ones with a warning. A checkpoint of another world size under ZeRO >= 1 is
        loaded through DeepSpeed's universal format (`self.universal`). Step s trains global
        samples [s·G, (s+1)·G) of the epoch, G = micro_batch_size × grad_accum × ranks, so a
        resume with another G would skip or repeat samples: refused (ConfigError), as are a
        changed lr schedule (`optim.schedule_change`) and checkpoints that exist when none is
        complete."""
        box = [None, [], None, False]  # tag, warnings, error, universal
        ckpt = self.dir
        if torch.distributed.get_rank() == 0 and self.cfg.resume == "auto" and ckpt.is_dir():
            remove_partial(ckpt)
            tag, passed = find_checkpoint(ckpt)
            box[:2] = tag, passed
            if tag is None and passed:
                box[2] = (
                    f"no complete checkpoint in {ckpt} ({passed[0]}); "
                    f"pass overwrite=true to start again or restore the files"
                )
            elif tag is not None:
                box[2], box[3] = self._compatible(tag, read_manifest(ckpt / tag), stage)
        torch.distributed.broadcast_object_list(box, src=0)
        tag, passed, error, self.universal = box
        if error:
            raise ConfigError(error)
        for line in passed:
            log.warning("skipping checkpoint: %s", line)
        return tag

    def _compatible(self, tag: str, meta: dict, stage: int) -> tuple[str | None, bool]:
        """(why checkpoint `tag` cannot be resumed by this run or None, whether it needs the
        universal format)."""
        world, tc = self.world, self.cfg.train
        if "schedule" in meta:  # absent from checkpoints that predate it: not checked
            why = schedule_change(meta["schedule"], tc, meta["step"])
            if why:
                return f"checkpoint {tag}: {why}", False
        was, was_stage = meta.get("world_size", world), meta.get("zero_stage", stage)
        was_batch = meta.get("global_batch")
        if was_batch is not None and was_batch != self.global_batch:
            fix = ""
            if was_batch % (tc.micro_batch_size * world) == 0:
                fix = f"; keep it with train.grad_accum={was_batch // (tc.micro_batch_size * world)}"
            elif was_batch % world == 0:
                fix = f"; keep it with train.micro_batch_size={was_batch // world} train.grad_accum=1"
            return (
                f"checkpoint {tag} trained with a global batch of {was_batch} samples per step, this run's is "
                f"{tc.micro_batch_size} × {tc.grad_accum} × {world} ranks = {self.global_batch}: the samples of the "
                f"epoch would be skipped or repeated{fix}",
                False,
            )
        if was == world or max(was_stage, stage) == 0:
            return None, False
        if was_batch is None:
            return (
                f"checkpoint {tag} was written by {was} ranks under ZeRO-{was_stage} without its global batch, "
                f"this run has {world}: resume with {was} processes, or start from its weights "
                "(huginn-db export) in a new run_dir",
                False,
            )
        if was_stage != stage:
            return (
                f"checkpoint {tag} was written under ZeRO-{was_stage} by {was} ranks, this run is ZeRO-{stage} "
                f"on {world}: change the world size or the stage, not both",
                False,
            )
        log.info("checkpoint %s: %d ranks -> %d under ZeRO-%d, loading its universal form", tag, was, world, stage)
        return None, True

    def load(self, engine, tag: str) -> Progress:
        """Engine, optimizer, schedule and RNG states of checkpoint `tag`; the trainer's progress."""
        load = tag
        if self.universal:  # converted once by rank 0; every rank then reads its own partitions
            box = [None, None]
            if torch.distributed.get_rank() == 0:
                try:
                    box[0] = to_universal(self.dir, tag)
                except CheckpointError as err:
                    box[1] = str(err)
            torch.distributed.broadcast_object_list(box, src=0)
            if box[1]:
                raise CheckpointError(box[1])
            load = box[0]
        _, client = engine.load_checkpoint(str(self.dir), tag=load)
        if self.universal and zero_stage(engine) == 3:
            _restore_param_groups(engine.optimizer.optimizer, self.dir / load)
        apply_schedule(engine.lr_scheduler)  # this run's schedule at the restored step
        torch.set_rng_state(client["torch_rng"])
        np.random.set_state(client["numpy_rng"])
        random.setstate(client["python_rng"])
        states = sorted((self.dir / tag).glob(OBJECTIVE_STATE.format(rank="*")))
        if self.objective is not None and states:
            tc = self.cfg.train
            self.objective.load_state_dict(
                [torch.load(p, weights_only=True) for p in states],
                tc.micro_batch_size,
                self.world,
                tc.grad_accum,
                rank=torch.distributed.get_rank(),
            )
        log.info("resumed from %s (step %d)", tag, client["step"])
        return Progress(client["step"], client["tokens"], client["flops"], client.get("skipped", 0))


def _restore_param_groups(optimizer, universal: Path) -> None:
    """DeepSpeed's ZeRO-3 universal load gives every param group the first group's settings
    (weight decay included, so norms and biases would decay) and one shared `step` tensor, which
    AdamW then advances once per group and step (the bias correction runs ahead); put back each
    group's own settings and its own step counter."""
    saved = torch.load(universal / "zero" / "optimizer_state.pt", map_location="cpu", weights_only=False)
    groups = saved["optimizer_state_dict"]["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise CheckpointError(
            f"{universal}: {len(groups)} optimizer param groups in the checkpoint, {len(optimizer.param_groups)} here"
        )
    for mine, theirs in zip(optimizer.param_groups, groups):
        mine.update({k: v for k, v in theirs.items() if k != "params"})
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()
