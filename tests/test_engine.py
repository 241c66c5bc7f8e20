"""The DeepSpeed engine pieces: the ZeRO-3 JSONs (GPU and CPU), and the evaluation copy of a
ZeRO-3 module (a real engine in a world of one, in-process)."""

import json

import pytest
import torch

from huginn_db.components import engine as E
from huginn_db.components.distributed import init_distributed
from huginn_db.components.optim import build_optimizer
from huginn_db.config import load_config, resolve
from huginn_db.model import RecurrentDepthLM
from tests.conftest import RECIPES, forget_deepspeed_world, one_rank_env

DS = RECIPES / "deepspeed"


def zero(name: str) -> dict:
    return json.loads((DS / name).read_text())["zero_optimization"]


def test_zero3_json_overlaps_and_prefetches_and_the_cpu_one_does_not():
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    gpu, cpu = zero("zero3.json"), zero("zero3-cpu.json")
    assert gpu["stage"] == cpu["stage"] == 3
    assert gpu["overlap_comm"] is True and gpu["stage3_prefetch_bucket_size"] > 0
    assert gpu["stage3_param_persistence_threshold"] > 0  # small params (norms, biases) stay whole
    assert cpu["overlap_comm"] is False and cpu["stage3_param_persistence_threshold"] == 0
    for name in ("zero3.json", "zero3-cpu.json"):
        cfg = load_config(RECIPES / "demo-db.yaml", [f"deepspeed=deepspeed/{name}"])  # the recipe's checks
        ds = E.deepspeed_config(cfg, world_size=8)
        assert E.config_stage(ds) == 3
        DeepSpeedZeroConfig(**ds["zero_optimization"])  # DeepSpeed's schema: no unknown or invalid key


@pytest.fixture
def zero3_engine(monkeypatch):
    """A ZeRO-3 engine (the CPU JSON) over the demo model at a tiny size, in a world of one."""
    for k, v in one_rank_env().items():
        monkeypatch.setenv(k, v)
    threads = torch.get_num_threads()
    cfg = load_config(
        RECIPES / "demo-db.yaml",
        ["deepspeed=deepspeed/zero3-cpu.json", "model.hidden=32", "model.mlp_hidden=64", "train.micro_batch_size=2"],
    )
    cfg = resolve(cfg, cfg.model.vocab_size)
    forget_deepspeed_world()
    init_distributed()
    engine = E.build_engine(
        (model := RecurrentDepthLM(cfg.model)), *build_optimizer(model, cfg.train), E.deepspeed_config(cfg, 1)
    )
    yield engine, cfg
    torch.distributed.destroy_process_group()
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_zero3_evaluation_model_is_the_trained_module_without_a_weight_init(zero3_engine, monkeypatch):
    engine, cfg = zero3_engine
    assert all(p.numel() == 0 for p in engine.module.parameters())  # the CPU JSON partitions even these
    ids = torch.randint(0, cfg.model.vocab_size, (2, 12))
    loss = engine(ids, num_steps=2, labels=ids).mean()  # one step: weights leave their init
    engine.backward(loss)
    engine.step()
    real_inits = []  # reset_parameters on tensors with storage: the init evaluation must not pay
    reset = RecurrentDepthLM.reset_parameters

    def spy(self):
        real_inits.extend(n for n, p in self.named_parameters() if not p.is_meta)
        reset(self)

    monkeypatch.setattr(RecurrentDepthLM, "reset_parameters", spy)
    model = E.evaluation_model(engine, cfg, rank=0)
    assert real_inits == []
    assert all(not t.is_meta and t.device == engine.device for t in [*model.parameters(), *model.buffers()])
    engine.module.eval()
    with torch.no_grad():
        want = engine.module(ids, num_steps=3, generator=torch.Generator().manual_seed(1))  # hooks gather
        got = model.eval()(ids, num_steps=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, want)
    assert torch.equal(model.rope_cos, engine.module.rope_cos) and torch.equal(model.rope_sin, engine.module.rope_sin)
