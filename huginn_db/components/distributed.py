"""Process group set-up, one-number collectives, communication failures, preemption signals."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
from pathlib import Path

import torch

from huginn_db.errors import ConfigError


def init_distributed(timeout: float = 1800.0) -> None:
    """Lets a bare `python -m huginn_db.train` run as a world of one (no launcher, no MPI).

    timeout: seconds a collective waits for the other ranks before it raises (train.dist_timeout).
    """
    import deepspeed

    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=os.environ.get("MASTER_PORT", str(port)),
        )
    if torch.cuda.is_available():
        # before any collective: NCCL places a rank's buffers on the current device, and
        # deepspeed.initialize (which would set it) runs after the first broadcast
        torch.cuda.set_device(local_rank())
    if not torch.distributed.is_initialized():
        check_shm_space()
        deepspeed.init_distributed(
            dist_backend="nccl" if torch.cuda.is_available() else "gloo", timeout=datetime.timedelta(seconds=timeout)
        )
        unlink_shm_segment()


SHM_SEGMENT_BYTES = 69_206_024  # DeepSpeed's allreduce_workspace: two flags, 2 × 1 MiB + 2 × 32 MiB


def check_shm_space() -> None:
    """Refuse to start local CPU ranks when /dev/shm cannot hold their collectives' segments.

    DeepSpeed writes each segment with one unchecked write(): on a full /dev/shm it fails and
    the rank dies of SIGSEGV on the failed mapping, while its peers report a lost rank (exit 5)
    instead of the cause; on a nearly full one the segment is short."""
    world, local = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_SIZE", 0))
    if torch.cuda.is_available() or local != world or not Path("/dev/shm").is_dir():
        return  # NCCL, or ranks on several hosts: DeepSpeed makes no segments
    free, need = shutil.disk_usage("/dev/shm").free, local * SHM_SEGMENT_BYTES
    if free < need:
        raise ConfigError(
            f"/dev/shm has {free / 2**20:.0f} MiB free, DeepSpeed's CPU collectives need {need / 2**20:.0f} MiB "
            f"for {local} local rank(s); remove stale deepspeed_allreduce_buffer_* files of dead runs or enlarge it"
        )


def unlink_shm_segment() -> None:
    """Remove the name of this rank's shared-memory segment for DeepSpeed's CPU collectives.

    DeepSpeed maps one 66 MB segment per rank, named after MASTER_ADDR, MASTER_PORT and the
    rank, and never unlinks it: every run of local CPU ranks left them in /dev/shm (tmpfs:
    memory), a SIGKILLed one too, and a later run on the same port opened the dead run's
    segments, whose flags can say a peer's copy is done before it is. Every rank maps every
    peer's segment while DeepSpeed starts, so after a barrier the names are not needed; the
    mappings live until the process ends."""
    if torch.cuda.is_available() or torch.distributed.get_backend() != "gloo":
        return  # NCCL: DeepSpeed makes no segments
    env = os.environ
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{env.get('MASTER_ADDR', '')}_{env.get('MASTER_PORT', '')}"
    path = Path("/dev/shm", f"{name}_{torch.distributed.get_rank()}")
    torch.distributed.barrier()
    path.unlink(missing_ok=True)


def local_rank() -> int:
    """This process's GPU on its node: the launcher's LOCAL_RANK (deepspeed, torchrun), else
    srun's SLURM_LOCALID, else 0."""
    return int(os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID") or 0)


def agree(value: float, op=torch.distributed.ReduceOp.MAX, device: torch.device | str = "cpu") -> float:
    """All ranks' reduction of one number (a collective; a CUDA tensor under NCCL)."""
    t = torch.tensor(float(value), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=op)
    return t.item()


def comm_failure(err: BaseException) -> bool:
    """Whether an exception is a failed collective (a dead or silent rank)."""
    text = str(err)
    return isinstance(err, torch.distributed.DistError) or any(
        m in text for m in ("gloo", "Connection closed", "Connection reset", "Timed out", "NCCL")
    )


class Preemption:
    """SIGTERM/SIGINT (cluster preemption, Ctrl-C) ask for a checkpoint at the next step end
    (`requested` is this rank's; the step guard's check agrees it across ranks)."""

    def __init__(self, install: bool = True):
        self.requested = False
        sigs = (signal.SIGTERM, signal.SIGINT) if install else ()
        self._old = {sig: signal.signal(sig, self._handler) for sig in sigs}

    def _handler(self, signum, frame):
        self.requested = True

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
