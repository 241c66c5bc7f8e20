import math
from unittest import mock

import pytest
import torch

from huginn_db import attention as A
from huginn_db import model as M
from huginn_db.model import ModelConfig, RecurrentDepthLM, select_attention_backend
from tests.conftest import TINY_MODEL

TINY = TINY_MODEL


def test_attention_backend_selection():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert select_attention_backend("auto", cpu) == "sdpa"  # xformers has no CPU kernels
    assert select_attention_backend("sdpa", cuda) == "sdpa"
    with mock.patch.object(A, "xformers_problem", return_value=None):
        assert select_attention_backend("auto", cuda) == "xformers"
        assert select_attention_backend("auto", cpu) == "sdpa"
    with mock.patch.object(A, "xformers_problem", return_value="import xformers.ops failed"):
        assert select_attention_backend("auto", cuda) == "sdpa"
        with pytest.raises(RuntimeError, match="xformers"):
            select_attention_backend("xformers", cuda)
    with pytest.raises(ValueError):
        select_attention_backend("flash", cpu)


def test_attention_choice_is_logged(caplog):
    M._cached_backend.cache_clear()
    model = RecurrentDepthLM(ModelConfig(**TINY))
    with caplog.at_level("INFO", logger="huginn_db.model"):
        model.recur(torch.randint(0, 50, (2, 8)), num_steps=2)
    assert "attention backend on cpu: sdpa" in caplog.text


def test_attention_is_causal():
    model = RecurrentDepthLM(ModelConfig(**TINY)).eval()
    ids = torch.randint(0, 50, (1, 10))
    g = lambda: torch.Generator().manual_seed(0)
    a = model.recur(ids, 3, generator=g())
    ids2 = ids.clone()
    ids2[0, 7:] = (ids2[0, 7:] + 1) % 50
    b = model.recur(ids2, 3, generator=g())
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-5)
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-3)


def test_huginn_structure_and_tied_head():
    model = RecurrentDepthLM(ModelConfig(**TINY))
    assert model.core.adapter.weight.shape == (32, 64)  # Linear(2h, h) on concat(state, e)
    assert len(model.prelude) == 1 and len(model.core.layers) == 2 and len(model.coda) == 1
    logits = model.recur(torch.randint(0, 50, (2, 8)), num_steps=3)
    assert logits.shape == (2, 8, 50)
    # tied: the head is the embedding matrix (no separate parameter)
    assert not any("head" in n for n, _ in model.named_parameters())
    attn = model.core.layers[0].attn
    assert attn.qkv.bias is None and attn.qk_bias.shape == (64,)  # biases only on q and k


def test_takase_init_scales():
    cfg = ModelConfig(**{**TINY, "hidden": 256, "heads": 4, "mlp_hidden": 512})
    model = RecurrentDepthLM(cfg)
    std = math.sqrt(2 / (5 * 256))
    out = std / math.sqrt(2 * cfg.effective_layers(cfg.init_recurrence))
    assert model.core.layers[0].mlp.fc.weight.std().item() == pytest.approx(std, rel=0.1)
    assert model.core.layers[0].mlp.proj.weight.std().item() == pytest.approx(out, rel=0.1)
    assert model.wte.weight.abs().max().item() <= 3 * std + 1e-6
    s = model.initial_state(torch.zeros(4, 64, 256))
    assert s.std().item() == pytest.approx(math.sqrt(2 / 5) * 0.986, rel=0.02)  # ±3σ truncation
    assert s.abs().max().item() <= 3 * math.sqrt(2 / 5) + 1e-6


def test_adaln_zero_starts_from_the_plain_block():
    plain = RecurrentDepthLM(ModelConfig(**TINY))
    cond = RecurrentDepthLM(ModelConfig(**TINY, sigma_conditioning=True))
    missing = cond.load_state_dict(plain.state_dict(), strict=False)
    assert all("ada" in k or "sigma_embed" in k for k in missing.missing_keys)
    ids = torch.randint(0, 50, (2, 8))
    e = plain.encode(ids)
    s = torch.randn(2, 8, 32)
    c = cond.sigma_embed(torch.randn(2, 1))
    assert torch.allclose(plain.decode(plain.core_step(s, e)), cond.decode(cond.core_step(s, e, c), c), atol=1e-5)


def test_denoiser_depends_on_sigma_once_trained():
    model = RecurrentDepthLM(ModelConfig(**TINY, sigma_conditioning=True))
    for n, p in model.named_parameters():
        if ".ada." in n:
            torch.nn.init.normal_(p, std=0.1)
    ids, z = torch.randint(0, 50, (1, 6)), torch.randn(1, 6, 32)
    e = model.encode(ids)
    a = model.denoise(e, z, torch.full((1, 1), 0.1), torch.ones(1, 1))
    b = model.denoise(e, z, torch.full((1, 1), 10.0), torch.ones(1, 1))
    assert not torch.allclose(a, b, atol=1e-4)
    per_token = model.denoise(e, z, torch.full((1, 6), 0.1), torch.ones(1, 6))
    assert torch.allclose(a, per_token, atol=1e-5)


def test_paper_shape_parameter_count():
    cfg = ModelConfig(vocab_size=32000, hidden=512, heads=8, mlp_hidden=2048, context=256)
    with torch.device("meta"):
        model = RecurrentDepthLM(cfg)
    n = model.num_parameters()
    per_layer = 4 * 512**2 + 2 * 512 + 3 * 512 * 2048 + 4 * 512
    assert n["embedding"] == 32000 * 512
    assert n["core"] == 4 * per_layer + 2 * 512 * 512
    assert n["total"] == 32000 * 512 + 8 * per_layer + 2 * 512 * 512 + 512


def test_sequence_longer_than_context_is_rejected():
    model = RecurrentDepthLM(ModelConfig(**TINY))
    with pytest.raises(ValueError, match="context"):
        model.encode(torch.zeros(1, 17, dtype=torch.long))
