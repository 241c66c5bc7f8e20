"""The DeepSpeed engine: its config (the recipe owns batch sizes and clipping), its ZeRO stage,
and a hook-free copy of the trained module for evaluation."""

from __future__ import annotations

import torch

from huginn_db.config import RunConfig, check_deepspeed_json
from huginn_db.model import RecurrentDepthLM


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
