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

from huginn_db.checkpoint import TMP_PREFIX, find_checkpoint, publish, read_manifest, remove_partial
from huginn_db.components.distributed import agree
from huginn_db.components.engine import zero_stage
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
                publish(self.dir, tag, {"step": step, "world_size": self.world, "zero_stage": zero_stage(engine)})
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

    def resume_point(self, stage: int) -> str | None:
        """The checkpoint tag to resume from (resume=auto), agreed by every rank (a collective).

        Rank 0 drops unfinished saves and picks the newest complete checkpoint, passing over
        damaged ones with a warning. Refused (ConfigError): checkpoints exist but none is
        complete, or the world size changed under ZeRO >= 1 (optimizer state is sharded per rank)."""
        box = [None, [], None]  # tag, warnings, error
        ckpt, world = self.dir, self.world
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
                meta = read_manifest(ckpt / tag)
                was, was_stage = meta.get("world_size", world), meta.get("zero_stage", stage)
                if was != world and max(was_stage, stage) > 0:
                    box[2] = (
                        f"checkpoint {tag} was written by {was} ranks under ZeRO-{was_stage}, this run has "
                        f"{world} under ZeRO-{stage}: sharded optimizer state cannot be re-split; resume "
                        f"with {was} processes, or start from its weights (huginn-db export) in a new run_dir"
                    )
        torch.distributed.broadcast_object_list(box, src=0)
        tag, passed, error = box
        if error:
            raise ConfigError(error)
        for line in passed:
            log.warning("skipping checkpoint: %s", line)
        return tag

    def load(self, engine, tag: str) -> Progress:
        """Engine, optimizer, schedule and RNG states of checkpoint `tag`; the trainer's progress."""
        _, client = engine.load_checkpoint(str(self.dir), tag=tag)
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
