"""The run directory and its metrics.jsonl: one JSON object per logged step, written by rank 0,
and the same numbers sent to the trackers the DeepSpeed JSON enables."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch
import yaml

from huginn_db.components.precision import autocast_dtype, peak_memory_bytes
from huginn_db.config import RunConfig, to_dict
from huginn_db.errors import ConfigError
from huginn_db.gpus import GPUS, gpu_key

log = logging.getLogger("huginn_db")


def prepare_run_dir(cfg: RunConfig, rank: int) -> Path:
    """Create the run directory and write config.yaml; refuse to clobber a run unless asked to."""
    run = Path(cfg.run_dir)
    if rank == 0:
        exists = (run / "metrics.jsonl").exists()
        if exists and not (cfg.overwrite or cfg.resume == "auto"):
            raise ConfigError(
                f"run_dir {run} already holds a run; pass resume=auto, overwrite=true or another run_dir="
            )
        if cfg.overwrite:
            shutil.rmtree(run / "checkpoints", ignore_errors=True)
            (run / "metrics.jsonl").unlink(missing_ok=True)
        run.mkdir(parents=True, exist_ok=True)
        (run / "metrics.jsonl").touch()
        (run / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return run


def truncate_metrics(path: Path, step: int) -> int:
    """Drop records past `step`: a killed run may have logged steps its last checkpoint lacks.
    Returns how many were dropped."""
    rows = [l for l in path.read_text().splitlines() if l.strip()]  # noqa: E741
    keep = [l for l in rows if json.loads(l)["step"] <= step]  # noqa: E741
    path.write_text("".join(l + "\n" for l in keep))  # noqa: E741
    return len(rows) - len(keep)


def tracker_events(rec: dict, section: str, step: int) -> list[tuple[str, float, int]]:
    """A record as DeepSpeed monitor events (name, value, step): `section/key`, nested keys
    joined by "/" (eval/accuracy/8/d1, train/bands/3); numbers only (None, text, flags left out)."""
    events = []

    def walk(name, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{name}/{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{name}/{i}", v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            events.append((name, float(value), step))

    for key, value in rec.items():
        if key != "step":
            walk(f"{section}/{key}", value)
    return events


def mark_restart(monitor, step: int) -> None:
    """Tell TensorBoard the run restarted after `step`: its reader then drops the points a killed
    run logged past its checkpoint (TensorBoard's purge of orphaned data), as metrics.jsonl does.
    The purge spans every tag, DeepSpeed's own Train/Samples/* (a samples axis) included."""
    writer = getattr(getattr(monitor, "tb_monitor", None), "summary_writer", None)
    if writer is None:
        return
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    writer.file_writer.add_event(Event(step=step + 1, session_log=SessionLog(status=SessionLog.START)))
    writer.flush()


def host_value(v):
    """A stat for the JSON record: tensors (kept on the device between log steps) read back."""
    if isinstance(v, torch.Tensor):
        return v.item() if v.dim() == 0 else v.tolist()
    return v


def mfu_peak(train_cfg, device, say: bool = True) -> float | None:
    """The MFU denominator: train.peak_flops, else on CUDA the GPU's dense datasheet peak
    (`huginn_db.gpus`) for what the matmuls run in — bf16 under bf16 autocast; in fp32 the TF32
    tensor-core peak where torch allows TF32 matmuls, else the plain fp32 one. None: no MFU.
    `say`: log which peak (or why none), once per run."""
    if train_cfg.peak_flops or device.type != "cuda":
        return train_cfg.peak_flops
    name = torch.cuda.get_device_name(device)
    key = gpu_key(name)
    if key is None:
        if say:
            log.info(
                "no MFU: %s is not in huginn_db.gpus' table; set train.peak_flops (e.g. from huginn-db peak)", name
            )
        return None
    bf16 = autocast_dtype(train_cfg.precision, device) == torch.bfloat16
    dtype = "bf16" if bf16 else "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
    peak = GPUS[key].peak(dtype)
    if say:
        log.info(
            "MFU against the %s's dense %s peak, %.1f TFLOP/s (datasheet; train.peak_flops overrides)",
            GPUS[key].name,
            dtype,
            peak / 1e12,
        )
    return peak


class MetricsWriter:
    """Collects micro-batch losses between log steps; `log` averages them over every rank (a
    collective) and rank 0 appends the record, and sends it to `monitor` (the engine's
    MonitorMaster) where the DeepSpeed JSON enables a tracker."""

    def __init__(self, run: Path, rank: int, device, world: int, peak_flops: float | None, start: int, monitor=None):
        self.rank, self.device, self.world, self.peak_flops = rank, device, world, peak_flops
        self.monitor = monitor if rank == 0 and getattr(monitor, "enabled", False) else None
        if rank == 0 and truncate_metrics(run / "metrics.jsonl", start) and self.monitor:
            mark_restart(self.monitor, start)
        self.file = (run / "metrics.jsonl").open("a") if rank == 0 else None
        self.losses = torch.zeros(2, dtype=torch.float64, device=device)  # Σ finite losses, their count
        self.rss_before = peak_memory_bytes(device)  # CPU: what model, engine and data already hold
        self.t_start = time.perf_counter()
        self.window = [0.0, 0, 0.0]  # since the last record: step seconds, tokens, seconds waiting for data

    def add_step(self, seconds: float, tokens: int, data_wait: float) -> None:
        """One optimizer step's time (evaluation and checkpoints not included), tokens (all
        ranks) and this rank's wait for its micro-batches."""
        self.window = [self.window[0] + seconds, self.window[1] + tokens, self.window[2] + data_wait]

    def add_loss(self, loss: torch.Tensor) -> None:
        """Accumulated on the device: read on the host only when a record is logged."""
        loss = loss.detach().double()
        finite = torch.isfinite(loss)  # a skipped step's finite loss is still logged
        self.losses += torch.stack([torch.where(finite, loss, 0.0), finite.double()])

    def log(
        self,
        engine,
        step: int,
        tokens: int,
        flops: float,
        seconds: float,
        step_tokens: int,
        step_flops: float,
        skipped: int,
        stats: dict,
    ) -> dict | None:
        torch.distributed.all_reduce(self.losses, op=torch.distributed.ReduceOp.SUM)
        total, count = self.losses.tolist()
        self.losses.zero_()
        (window, window_tokens, wait), self.window = self.window, [0.0, 0, 0.0]
        if self.rank != 0:
            return None
        peak = peak_memory_bytes(self.device)
        if self.device.type == "cuda":  # the next record's peak is its own window's
            torch.cuda.reset_peak_memory_stats(self.device)
        rec = {
            "step": step,
            "loss": total / count if count else None,
            "tokens": tokens,
            "flops": flops,
            "seconds": seconds,
            "tokens_per_s": step_tokens / seconds,
            "window_tokens_per_s": window_tokens / window if window else None,
            "data_wait_share": wait / window if window else None,
            "elapsed": self.elapsed(),
            "lr": engine.get_lr()[0],
            "peak_memory_bytes": peak,
            "peak_memory_delta_bytes": peak - self.rss_before,
            "skipped": skipped,
            **{k: host_value(v) for k, v in stats.items()},
        }
        grad_norm = engine.get_global_grad_norm()
        if grad_norm is not None and math.isfinite(float(grad_norm)):
            rec["grad_norm"] = float(grad_norm)
        if self.peak_flops:  # model FLOPs utilisation of this step, per rank
            rec["mfu"] = step_flops / self.world / seconds / self.peak_flops
        self.write(rec)
        return rec

    def write(self, rec: dict, section: str = "train") -> None:
        """Append `rec` to metrics.jsonl; trackers get its numbers as `section/key`."""
        if self.file:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()
        self.track(rec, section, rec["step"])

    def track(self, rec: dict, section: str, step: int) -> None:
        if self.monitor:
            self.monitor.write_events(tracker_events(rec, section, step))

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def close(self) -> None:
        if self.file:
            self.file.close()
