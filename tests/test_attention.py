"""attention=auto probes xformers once per device type and falls back to SDPA where it fails;
fake xformers modules stand in for the wheel, CPU tensors for the probe's CUDA ones."""

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from huginn_db import attention as A

CUDA = torch.device("cuda")
NO_KERNEL = "No operator found for `memory_efficient_attention_forward` with inputs:\n     query : shape=(1, 16, 2, 64)"


def causal_sdpa(q, k, v, attn_bias=None):
    assert attn_bias == "causal-mask"
    return F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
    ).transpose(1, 2)


def fake_xformers(monkeypatch, attention) -> list:
    """Installs a fake `xformers.ops` whose memory_efficient_attention is `attention`; returns its calls."""
    calls = []

    def op(*args, **kw):
        calls.append(args)
        return attention(*args, **kw)

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention, ops.LowerTriangularMask = op, lambda: "causal-mask"
    pkg = types.ModuleType("xformers")
    pkg.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", pkg)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    return calls


@pytest.fixture(autouse=True)
def cpu_probe(monkeypatch):
    monkeypatch.setattr(A, "_probe_inputs", lambda device_type: tuple(torch.randn(1, 16, 2, 64) for _ in range(3)))
    A.xformers_problem.cache_clear()
    A._warn_fallback.cache_clear()
    yield
    A.xformers_problem.cache_clear()
    A._warn_fallback.cache_clear()


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_kernels_that_fail_fall_back_to_sdpa_with_one_warning(monkeypatch, caplog):
    def broken(q, k, v, attn_bias=None):
        raise NotImplementedError(NO_KERNEL)

    calls = fake_xformers(monkeypatch, broken)
    with caplog.at_level("INFO", logger="huginn_db.model"):
        assert A.select_attention_backend("auto", CUDA) == "sdpa"
        assert A.select_attention_backend("auto", CUDA) == "sdpa"
    assert len(calls) == 1  # probed once per device type
    (warning,) = warnings(caplog)
    assert "xformers unusable on cuda" in warning and "NotImplementedError: No operator found" in warning
    with pytest.raises(RuntimeError, match="model.attention=xformers, but .*No operator found") as refused:
        A.select_attention_backend("xformers", CUDA)
    assert "\n" not in str(refused.value)


def test_kernels_that_compute_something_else_fall_back_to_sdpa(monkeypatch, caplog):
    fake_xformers(monkeypatch, lambda q, k, v, attn_bias=None: v)  # not attention
    with caplog.at_level("WARNING", logger="huginn_db.model"):
        assert A.select_attention_backend("auto", CUDA) == "sdpa"
    (warning,) = warnings(caplog)
    assert "disagrees with SDPA" in warning
    with pytest.raises(RuntimeError, match="disagrees with SDPA"):
        A.select_attention_backend("xformers", CUDA)


def test_an_xformers_that_does_not_import_falls_back_to_sdpa(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "xformers", None)  # `import xformers.ops` raises
    monkeypatch.delitem(sys.modules, "xformers.ops", raising=False)
    with caplog.at_level("WARNING", logger="huginn_db.model"):
        assert A.select_attention_backend("auto", CUDA) == "sdpa"
        assert A.select_attention_backend("auto", CUDA) == "sdpa"
    (warning,) = warnings(caplog)
    assert "import xformers.ops failed" in warning
    with pytest.raises(RuntimeError, match="import xformers.ops failed"):
        A.select_attention_backend("xformers", CUDA)


def test_working_kernels_are_chosen_without_a_warning(monkeypatch, caplog):
    calls = fake_xformers(monkeypatch, causal_sdpa)
    with caplog.at_level("WARNING", logger="huginn_db.model"):
        assert A.select_attention_backend("auto", CUDA) == "xformers"
        assert A.select_attention_backend("xformers", CUDA) == "xformers"
    assert len(calls) == 1 and warnings(caplog) == []
    assert A.select_attention_backend("auto", torch.device("cpu")) == "sdpa"  # no CPU kernels, no probe
    assert len(calls) == 1
