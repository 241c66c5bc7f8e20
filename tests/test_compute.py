import dataclasses
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from huginn_db import compute, measure
from huginn_db.cli import main as cli
from huginn_db.model import ModelConfig, RecurrentDepthLM
from huginn_db.objectives import for_config
from huginn_db.objectives.bptt import BPTTConfig, expected_iterations, recurrence_pmf, sample_recurrence
from huginn_db.objectives.deep_supervision import DeepSupervisionConfig
from huginn_db.objectives.diffusion_blocks import DiffusionBlocksConfig
from huginn_db.objectives.fixed_depth import FixedDepthConfig
from huginn_db.objectives.oracle import OracleConfig
from tests.conftest import RECIPES, ROOT, TINY_MODEL

TINY = ModelConfig(**TINY_MODEL)
PAPER = ModelConfig(
    vocab_size=32000,
    hidden=512,
    heads=8,
    mlp_hidden=2048,
    prelude_layers=2,
    core_layers=4,
    coda_layers=2,
    context=256,
    init_recurrence=32,
)
OBJECTIVES = {
    "bptt": BPTTConfig(mean_recurrence=6, backprop_depth=2),
    "db_sequence": DiffusionBlocksConfig(),
    "db_token": DiffusionBlocksConfig(sigma_per="token"),
    "db_sc_latent": DiffusionBlocksConfig(num_bands=4, self_condition="latent", self_condition_prob=0.75),
    "db_sc_prediction": DiffusionBlocksConfig(num_bands=4, self_condition="prediction", self_condition_sigma="same"),
    "fixed_full": FixedDepthConfig(depth=3),
    "fixed_truncated": FixedDepthConfig(depth=4, backprop_depth=2),
    "deep_supervision": DeepSupervisionConfig(nograd_steps=2, segments=4),
    # k = 3 grad iterations; the damped update and the state noise are element-wise: no matmul FLOPs
    "deep_supervision_k3": DeepSupervisionConfig(nograd_steps=2, grad_steps=3, segments=4, damping=0.05),
}
# the FLOP count also prices DB's unrolled steps (their activation estimate is not modelled)
FLOP_CASES = {
    **OBJECTIVES,
    "db_unroll": DiffusionBlocksConfig(num_bands=4, unroll=3),
    "db_unroll_last_sc": DiffusionBlocksConfig(
        num_bands=4, unroll=3, unroll_loss="last", self_condition="prediction", self_condition_prob=0.75
    ),
    "oracle": OracleConfig(depth=3),  # coda + head after every iteration, no readouts
}


def _batch(B, T, V):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (B, T + 1), generator=g)
    # the oracle's per-iteration labels (up to 8 iterations); the other objectives ignore them
    steps = torch.randint(0, V, (B, 8, T), generator=g)
    return {
        "input_ids": ids[:, :-1],
        "target_ids": ids[:, 1:],
        "loss_weight": torch.ones(B, T),
        "step_target_ids": steps,
    }


def _objective(oc):
    return for_config(oc)(oc)


def _short_step(oc: BPTTConfig) -> int:
    """A step whose r is just above k: both no-grad and grad iterations, and cheap."""
    k = oc.backprop_depth
    return next(s for s in range(100_000) if k < sample_recurrence(s, oc) <= k + 3)


def _model(mc, oc):
    return RecurrentDepthLM(dataclasses.replace(mc, **for_config(oc).model_options(oc)))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine a second OpenMP thread that has to wait
    for a busy core made the paper-shape step ~10× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def paper_model():
    """One σ-conditioned paper-shape model (52.9M parameters, slow to initialise): BPTT's
    recurrence passes no σ, so it runs exactly the plain model's matmuls on it."""
    torch.manual_seed(0)
    return RecurrentDepthLM(dataclasses.replace(PAPER, sigma_conditioning=True))


@pytest.mark.parametrize("name", list(FLOP_CASES))
def test_analytic_train_flops_match_flop_counter_tiny(name):
    oc = FLOP_CASES[name]
    B, T = 4, 12
    model = _model(TINY, oc)
    step = _short_step(oc) if name == "bptt" else 3
    r = for_config(oc).draw_iterations(oc, step)
    if getattr(oc, "self_condition", "none") != "none" or getattr(oc, "unroll", 1) > 1:  # this step's draw
        r = _objective(oc).loss(_model(TINY, oc), _batch(B, T, TINY.vocab_size), step)[1]["r"]
    measured = measure.measure_step_flops(model, _objective(oc), _batch(B, T, TINY.vocab_size), step)
    analytic = compute.train_flops(TINY, oc, B, T, r=r)
    assert measured == pytest.approx(analytic["total"], rel=0.02)
    assert set(analytic) == {*compute.TRAIN_PARTS, "total"}
    assert model.prelude[0].attn.qkv.weight.grad is not None  # a real backward ran


def test_flop_counter_counts_cpu_attention():
    """Plain FlopCounterMode sees 0 FLOPs in CPU SDPA; ours counts torch's full-T² formula."""
    q = torch.randn(2, 4, 16, 8, requires_grad=True)
    with measure.flop_counter() as fc:
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
    fwd = 2 * 2 * (2 * 4 * 16 * 16 * 8)  # QKᵀ and P·V over the full 16×16 scores
    assert fc.get_total_flops() == fwd + 2.5 * fwd


@pytest.mark.parametrize("name", ["bptt", "db_sequence"])
def test_analytic_train_flops_match_flop_counter_paper_shape(paper_model, name):
    oc = BPTTConfig() if name == "bptt" else DiffusionBlocksConfig(num_bands=32)
    B, T = 1, 32
    step = _short_step(oc) if name == "bptt" else 0
    r = sample_recurrence(step, oc) if name == "bptt" else None
    measured = measure.measure_step_flops(paper_model, _objective(oc), _batch(B, T, PAPER.vocab_size), step)
    paper_model.zero_grad(set_to_none=True)
    assert measured == pytest.approx(compute.train_flops(PAPER, oc, B, T, r=r)["total"], rel=0.02)


def test_param_counts_equal_num_parameters(paper_model):
    for mc in (TINY, dataclasses.replace(TINY, sigma_embed_dim=16)):
        for cond in (False, True):
            model = RecurrentDepthLM(dataclasses.replace(mc, sigma_conditioning=cond))
            counted = compute.param_counts(mc, cond)
            assert {k: counted[k] for k in model.num_parameters()} == model.num_parameters()
            assert (counted["adaln"] > 0) == cond
    counted = compute.param_counts(PAPER, True)
    assert {k: counted[k] for k in paper_model.num_parameters()} == paper_model.num_parameters()


def test_expected_bptt_flops_match_monte_carlo():
    oc = BPTTConfig()  # r̄ = 32, k = 8
    pmf = recurrence_pmf(oc)
    r = np.arange(1, len(pmf) + 1)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-9)
    assert (pmf * r).sum() == pytest.approx(oc.mean_recurrence + 1, rel=1e-6)  # E[r] = r̄ + 1
    e = expected_iterations(oc)
    assert e["grad"] == pytest.approx((pmf * np.minimum(r, 8)).sum(), rel=1e-9)
    draws = [sample_recurrence(s, oc) for s in range(20_000)]
    assert np.mean(np.minimum(draws, 8)) == pytest.approx(e["grad"], abs=0.01)
    mc_flops = np.mean([compute.train_flops(PAPER, oc, 32, 256, r=x)["total"] for x in draws])
    assert mc_flops == pytest.approx(compute.train_flops(PAPER, oc, 32, 256)["total"], rel=0.005)


def test_checkpoint_recompute_adds_one_forward_of_the_grad_iterations():
    oc = BPTTConfig()
    plain = compute.train_flops(PAPER, oc, 2, 64, r=20)
    ckpt = compute.train_flops(PAPER, oc, 2, 64, r=20, checkpoint_core=True)
    core_fwd = compute.train_flops(PAPER, oc, 2, 64, r=9)["core_nograd"]  # one no-grad iteration
    assert ckpt["recompute"] == pytest.approx(8 * core_fwd)
    assert ckpt["total"] - plain["total"] == pytest.approx(8 * core_fwd)


@pytest.mark.parametrize("mc", [TINY, PAPER], ids=["tiny", "paper"])
def test_inference_db_iteration_costs_more_than_huginn(mc):
    bp, db = BPTTConfig(), DiffusionBlocksConfig()
    for K in (1, 4, 8, 32):
        b = compute.inference_flops(mc, bp, K, mc.context)
        d = compute.inference_flops(mc, db, K, mc.context)
        assert d["per_iteration"] > b["per_iteration"]
        # DB's iteration adds the coda and the head twice (logits, then softmax·Ê) to Huginn's core
        extra = d["per_iteration"] - b["per_iteration"]
        assert extra == pytest.approx(d["coda"] / K + 2 * d["head"] / K + d["adaln"] / K)
        assert d["readout"] == d["head"] == K * 2 * mc.hidden * mc.vocab_size
    heun = compute.inference_flops(mc, dataclasses.replace(db, sampler="heun"), 8, mc.context)
    core = compute.inference_flops(mc, bp, 1, mc.context)["per_iteration"]
    assert heun["core"] == 15 * core  # 2K − 1 denoiser evaluations


@pytest.mark.parametrize("loss_chunk", [0, 16], ids=["full_logits", "chunked_loss"])
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_activation_estimate_matches_saved_tensors(name, loss_chunk):
    oc = OBJECTIVES[name]
    mc = dataclasses.replace(TINY, loss_chunk=loss_chunk)
    B, T = 4, 12
    step = _short_step(oc) if name == "bptt" else 3
    saved = measure.measure_saved_activations(_model(mc, oc), _objective(oc), _batch(B, T, mc.vocab_size), step)
    est = compute.activation_memory(mc, oc, B, T)
    assert saved == pytest.approx(est["saved"], rel=0.05)
    assert est["peak"] > est["saved"]


def test_chunked_loss_memory_estimate_at_paper_shape_drops_the_logits():
    """At the paper shape the B×T×V logits are what narrows the BPTT/DB memory ratio; chunked,
    activations set it, towards the layer-count bound (36 vs 8 blocks' worth)."""
    B, T = 4, 256
    full = {n: compute.activation_memory(PAPER, oc, B, T)["peak"] for n, oc in OBJECTIVES.items()}
    chunked_mc = dataclasses.replace(PAPER, loss_chunk=256)
    chunked = {n: compute.activation_memory(chunked_mc, oc, B, T)["peak"] for n, oc in OBJECTIVES.items()}
    bptt = BPTTConfig(mean_recurrence=32, backprop_depth=8)
    ratio_full = compute.activation_memory(PAPER, bptt, B, T)["peak"] / full["db_sequence"]
    ratio_chunked = compute.activation_memory(chunked_mc, bptt, B, T)["peak"] / chunked["db_sequence"]
    assert all(chunked[n] < full[n] for n in full)
    assert ratio_chunked > ratio_full + 0.5
    flops = compute.train_flops(chunked_mc, bptt, B, T, r=20)
    assert flops["recompute"] == 2 * B * T * PAPER.hidden * PAPER.vocab_size  # the head, once more


def test_flops_cli_paper_recipe(capsys):
    assert cli(["flops", str(RECIPES / "paper-lm1b-db.yaml")]) == 0
    text = capsys.readouterr().out
    ratio = float(re.search(r"ratio BPTT/DB training FLOPs per step \(E over r\): ([\d.]+)x", text).group(1))
    assert 5.0 < ratio < 7.0
    for part in ("prelude", "core_grad", "core_nograd", "coda", "head", "adaln"):
        assert re.search(rf"^\s+{part}\s", text, re.M), part
    assert cli(["flops", str(RECIPES / "paper-lm1b-db.yaml"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["baseline"] == "diffusion_blocks"  # the recipe's objective
    assert rep["train_ratio"]["bptt"] == pytest.approx(ratio, abs=0.01)
    assert rep["train_ratio"]["diffusion_blocks"] == 1
    assert 1 + sum(rep["train_ratio_by_part"]["bptt"].values()) == pytest.approx(rep["train_ratio"]["bptt"])
    assert set(rep["train"]["bptt"]["per_step"]) == {*compute.TRAIN_PARTS, "total"}
    assert set(rep["inference"]["bptt"]) == {"1", "4", "8", "32"}
    assert all(rep["inference_ratio"]["bptt"][K] < 1 for K in ("4", "8", "32"))  # DB's sampler costs more per token
    assert cli(["flops", str(RECIPES / "paper-lm1b-db.yaml"), "--json", "--baseline", "bptt"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["train_ratio"]["diffusion_blocks"] == pytest.approx(1 / ratio, rel=0.01)
    assert cli(["flops", str(RECIPES / "paper-lm1b-db.yaml"), "--baseline", "nope"]) == 2


def test_flops_cli_huginn_shape_ratio_and_bad_override(capsys):
    assert cli(["flops", str(RECIPES / "huginn-3.5b-db.yaml"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert 7.0 < rep["train_ratio"]["bptt"] < 9.0
    assert rep["params"]["bptt"]["total"] == pytest.approx(3.56e9, rel=0.01)
    assert cli(["flops", str(RECIPES / "paper-lm1b-db.yaml"), "model.hiden=3"]) == 2


def test_flops_cli_measure_tiny_recipe(capsys):
    assert cli(["flops", str(RECIPES / "demo-db.yaml"), "--measure", "--measure-seq", "16", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["measured"]
    for name in ("bptt", "diffusion_blocks"):
        assert m[name]["measured"] == pytest.approx(m[name]["analytic"], rel=0.02)


def test_peak_cli(capsys):
    assert measure.measure_peak(torch.float32, n=128, seconds=0.05) > 0
    assert cli(["peak", "--json", "--n", "128", "--seconds", "0.05"]) == 0
    peaks = json.loads(capsys.readouterr().out)["flops_per_s"]
    assert peaks["bf16"] > 0 and peaks["fp32"] > 0


def test_bench_train_quick(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "eval" / "bench_train.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())["results"]
    ratios = [l for l in proc.stdout.splitlines() if l.startswith("ratio ")]
    # 7 ratios of every objective to the cheapest one
    assert len(ratios) == 7 * (len(res) - 1) and all(re.search(r": [\d.]+x$", l) for l in ratios)
    assert sum(l.startswith("ratio BPTT/") for l in ratios) == 7
    assert "chunked cross-entropy (c=32)" in ratios[-1]
    for r in res.values():
        assert r["measured"] == pytest.approx(r["analytic_at_measured_r"], rel=0.02)
        assert r["peak_mem"] > 0 and r["median_s"] > 0 and r["peak_mem_chunked"] > 0
        assert r["mem_est_chunked"] < r["mem_est"]
