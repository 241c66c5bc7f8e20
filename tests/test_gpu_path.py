"""What differs on a GPU, proved on the CPU: the device is set before the first collective, the
model's forward owns mixed precision (DeepSpeed cannot switch it off), random draws happen on the
device of the tensor they fill, and a training step reads the device from the host once."""

import os
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

from huginn_db.components import distributed
from huginn_db.config import ConfigError, load_config
from huginn_db.model import ModelConfig, RecurrentDepthLM
from huginn_db.objectives import OBJECTIVES, build_objective
from huginn_db.objectives.base import seed_of
from huginn_db.objectives.diffusion_blocks import DiffusionBlocksConfig, DiffusionBlocksObjective
from tests.conftest import ROOT, TINY_MODEL, forget_deepspeed_world, one_rank_env

GOLDEN = ROOT / "tests" / "assets" / "golden.yaml"


# --- 1. device placement -------------------------------------------------------------------------


@pytest.mark.parametrize("env", [{"LOCAL_RANK": "3"}, {"SLURM_LOCALID": "2"}])
def test_the_cuda_device_is_set_before_the_process_group_and_any_collective(env, monkeypatch):
    import deepspeed

    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        monkeypatch.delenv(key, raising=False)
    for k, v in {"RANK": "1", "WORLD_SIZE": "4", **env}.items():
        monkeypatch.setenv(k, v)
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(
        deepspeed, "init_distributed", lambda dist_backend, timeout: calls.append(("init", dist_backend))
    )
    distributed.init_distributed()
    assert calls == [("set_device", int(next(iter(env.values())))), ("init", "nccl")]


# --- 2. mixed precision --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_of_one():
    """A gloo process group of one rank in this process (trainers built with `setup`)."""
    env = one_rank_env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    forget_deepspeed_world()
    distributed.init_distributed()
    yield
    torch.distributed.destroy_process_group()
    torch.set_num_threads(threads)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _trainer(tmp_path, objective: str, *overrides: str):
    from huginn_db.train import setup

    cfg = load_config(
        GOLDEN,
        [f"objective.name={objective}", f"run_dir={tmp_path / objective}", "train.micro_batch_size=2", *overrides],
    )
    return setup(cfg)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_engine_forward_computes_in_the_recipe_precision_where_deepspeed_sees_autocast(
    objective, precision, world_of_one, tmp_path, monkeypatch
):
    """On CUDA DeepSpeed >= 0.17.6 runs engine(...) with autocast off when autocast was entered
    outside it; on the CPU it cannot see CPU autocast. Here it is made to see it, as on CUDA."""
    import deepspeed.runtime.torch_autocast as ds_autocast

    is_enabled = torch.is_autocast_enabled
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *a: is_enabled(*a) if a else is_enabled("cpu"))
    monkeypatch.setattr(ds_autocast, "_WARNED_NESTED_AUTOCAST", False)
    warned = []
    monkeypatch.setattr(ds_autocast.logger, "warning", lambda msg, *a, **k: warned.append(msg))
    t = _trainer(tmp_path, objective, f"train.precision={precision}")
    seen = []
    t.engine.module.core.layers[0].attn.qkv.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    t.train_step(0)
    assert seen and set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float32}
    assert not [m for m in warned if "autocast" in m]


@pytest.mark.parametrize("section", ["bf16", "torch_autocast"])
def test_a_deepspeed_json_that_takes_over_precision_is_refused_in_one_line(section, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(f'{{"zero_optimization": {{"stage": 0}}, "{section}": {{"enabled": true}}}}')
    with pytest.raises(ConfigError, match=f"enables '{section}'.*train.precision=bf16") as err:
        load_config(GOLDEN, [f"deepspeed={ds}", "train.precision=bf16"])
    assert "\n" not in str(err.value)


# --- 3. random draws -----------------------------------------------------------------------------


class DrawSpy(TorchFunctionMode):
    """Records each random draw made with a generator: (generator device, filled tensor's device,
    shape), and every `Tensor.to` of a float tensor (a draw made elsewhere and copied over)."""

    def __init__(self):
        super().__init__()
        self.draws, self.moves = [], []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        g = kwargs.get("generator")
        if isinstance(g, torch.Generator) and isinstance(out, torch.Tensor):
            self.draws.append((g.device.type, out.device.type, tuple(out.shape)))
        if func is torch.Tensor.to and isinstance(out, torch.Tensor) and out.is_floating_point():
            self.moves.append(tuple(out.shape))
        return out


@pytest.fixture
def checked_trunc_normal(monkeypatch):
    """nn.init.trunc_normal_ refusing a generator of another device than its tensor, as CUDA does
    (torch skips the draw on meta tensors, so a spy has to ask before it)."""
    real = torch.nn.init.trunc_normal_

    def trunc_normal_(tensor, *a, generator=None, **k):
        if generator is not None and generator.device.type != tensor.device.type:
            raise RuntimeError(f"Expected a '{tensor.device.type}' device type for generator")
        return real(tensor, *a, generator=generator, **k)

    monkeypatch.setattr(torch.nn.init, "trunc_normal_", trunc_normal_)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_inference_with_a_cpu_generator_runs_on_another_device(objective, checked_trunc_normal):
    """Evaluation passes a CPU generator; the model may be on a GPU (here: meta, which has no
    generators either). Every draw happens on the generator's device, then moves."""
    obj = build_objective(objective, OBJECTIVES[objective].config(), seed=0)
    cfg = ModelConfig(**TINY_MODEL, **OBJECTIVES[objective].model_options(obj.cfg))
    model = RecurrentDepthLM(cfg).to("meta")
    ids = torch.zeros(2, 8, dtype=torch.long, device="meta")
    with DrawSpy() as spy:
        logits = obj.logits(model, ids, 2, generator=torch.Generator().manual_seed(0))
    assert logits.device.type == "meta" and logits.shape == (2, 8, cfg.vocab_size)
    assert spy.draws and all(g == t for g, t, _ in spy.draws)


def test_a_diffusion_blocks_step_draws_sigma_and_noise_on_the_batch_device():
    """ε (B, T, h) is born on the device with a generator of that device, not drawn on the host
    and copied; σ likewise. (On the CPU the numbers are the CPU generator's, as before.)"""
    B, T = 4, 8
    obj = DiffusionBlocksObjective(DiffusionBlocksConfig(num_bands=4))
    model = RecurrentDepthLM(ModelConfig(**TINY_MODEL, sigma_conditioning=True))
    seen = {}

    class Stub:  # records what the step hands the model
        cfg = model.cfg

        def __call__(self, ids, **kw):
            seen.update(kw)
            return torch.zeros(B, T, requires_grad=True)

    ids = torch.randint(0, 50, (B, T))
    batch = {"input_ids": ids, "target_ids": ids, "loss_weight": torch.ones(B, T)}
    with DrawSpy() as spy:
        obj.loss(Stub(), batch, step=0, slot=3)
    assert {s for _, _, s in spy.draws} == {(B,), (B, T, model.cfg.hidden)}  # σ's uniforms, ε
    assert all(g == t == "cpu" for g, t, _ in spy.draws)
    assert (B, T, model.cfg.hidden) not in spy.moves
    g = torch.Generator().manual_seed(seed_of(0, 3, 2))
    torch.rand(B, generator=g, dtype=torch.float64)
    assert torch.equal(seen["noise"], torch.randn(B, T, model.cfg.hidden, generator=g))  # the same numbers


# --- 4. host reads per step ----------------------------------------------------------------------

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


@pytest.mark.parametrize("objective", sorted(OBJECTIVES) + ["diffusion_blocks:self_condition=latent"])
def test_a_training_step_reads_the_device_once_outside_log_steps(objective, world_of_one, tmp_path, monkeypatch):
    """grad_accum 4: the step guard's one verdict (losses, gradients, preemption) is the only
    host read huginn_db makes; losses, stats and FLOPs wait for the log step."""
    name, _, opt = objective.partition(":")
    extra = [f"objective.{name}.{opt}"] if opt else []
    t = _trainer(tmp_path, name, "train.grad_accum=4", "train.log_every=1000", *extra)
    t.train_step(0)
    reads = []
    package = str(ROOT / "huginn_db")
    for attr in READS:
        real = getattr(torch.Tensor, attr)

        def spy(self, *a, _real=real, _attr=attr, **k):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(package):
                reads.append(f"{_attr} at {os.path.basename(caller)}:{sys._getframe(1).f_lineno}")
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, attr, spy)
    t.train_step(1)
    monkeypatch.undo()
    assert len(reads) == 1 and "guard.py" in reads[0], reads
