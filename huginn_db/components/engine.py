"""The DeepSpeed engine: its config (the recipe owns batch sizes and clipping), its ZeRO stage,
and a hook-free copy of the trained module for evaluation."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from huginn_db.config import RunConfig, check_deepspeed_json
from huginn_db.errors import ConfigError
from huginn_db.model import RecurrentDepthLM

# DeepSpeed's monitors (its MonitorMaster): a JSON section with "enabled": true switches one on
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "csv_monitor": None, "comet": "comet_ml"}


def deepspeed_config(cfg: RunConfig, world_size: int) -> dict:
    ds = check_deepspeed_json(cfg, world_size)  # ConfigError where the JSON contradicts the recipe
    t = cfg.train
    ds["train_micro_batch_size_per_gpu"] = t.micro_batch_size
    ds["gradient_accumulation_steps"] = t.grad_accum
    ds["train_batch_size"] = t.micro_batch_size * t.grad_accum * world_size
    ds["gradient_clipping"] = t.grad_clip
    ds.setdefault("steps_per_print", 10**9)  # we log ourselves
    ds.setdefault("zero_allow_untested_optimizer", True)  # SkippableAdamW is AdamW plus a skip flag
    point_trackers(ds, cfg)
    return ds


def point_trackers(ds: dict, cfg: RunConfig) -> list[str]:
    """The trackers the JSON enables, writing into the run directory where it names no place
    (DeepSpeed's default is the launch directory): run_dir/tensorboard/, run_dir/csv_monitor/,
    W&B's files under run_dir/wandb/. A tracker whose package is missing is refused here, before
    the run directory is touched."""
    run, on = Path(cfg.run_dir), [k for k in TRACKERS if (ds.get(k) or {}).get("enabled")]
    for name in on:
        package = TRACKERS[name]
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"deepspeed: {Path(cfg.deepspeed).name} enables '{name}', but the {package} package is not "
                f"installed; pip install {package}, or remove the section"
            )
        sec = ds[name] = dict(ds[name])
        if name in ("tensorboard", "csv_monitor"):
            if not sec.get("output_path"):  # DeepSpeed writes to output_path/job_name
                sec["output_path"] = str(run / name)
                sec.setdefault("job_name", "")
            sec.setdefault("job_name", run.name)  # a shared output_path: one directory per run
        if name == "comet":
            sec.setdefault("experiment_name", run.name)
            sec.setdefault("samples_log_interval", 1)  # our events' step is the optimizer step, not samples
    if "wandb" in on:  # wandb.init takes neither from DeepSpeed: its environment variables do
        os.environ.setdefault("WANDB_DIR", str(run))
        os.environ.setdefault("WANDB_NAME", run.name)
    return on


def config_stage(ds_config: dict) -> int:
    return int((ds_config.get("zero_optimization") or {}).get("stage", 0))


def build_engine(model: torch.nn.Module, optimizer, scheduler, ds_config: dict):
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    if zero_stage(engine) == 3:
        # the tied head and the DB targets read wte.weight outside nn.Embedding.forward
        deepspeed.zero.register_external_parameter(engine.module, engine.module.wte.weight)
    return engine


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
    with torch.device("meta"):  # no init of weights about to be replaced (minutes at 3.5B)
        model = RecurrentDepthLM(cfg.model)
    model.load_state_dict(state, assign=True)
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:  # not in the state dict (RoPE tables): the engine's, as it trained with
            owner, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner), leaf, engine.module.get_buffer(name).detach().clone())
    return model.to(engine.device)
