"""The GPU smoke test (eval/gpu_smoke.sh, eval/gpu_checks.py): its CPU dry run end to end, and
the in-process checks on CPU, including that each detector fires on the fault it is there for."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import RECIPES, ROOT, clean_env

_spec = importlib.util.spec_from_file_location("gpu_checks", ROOT / "eval" / "gpu_checks.py")
gpu_checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_checks)

SMOKE = ROOT / "eval" / "gpu_smoke.sh"
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


# DeepSpeed caches its process groups per process: a Trainer per test needs a process per test
BF16_DRIVER = """
import importlib.util, json, sys, torch
spec = importlib.util.spec_from_file_location("gpu_checks", sys.argv[1])
gpu_checks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_checks)
if sys.argv[3] == "outer-cuda-autocast":
    # what CUDA does when autocast wraps engine(...): DeepSpeed's no-argument
    # is_autocast_enabled() asks about CUDA, finds it on, warns and turns autocast off inside
    real = torch.is_autocast_enabled
    torch.is_autocast_enabled = lambda *a, **k: True if not (a or k) else real(*a, **k)
res = gpu_checks.bf16_step(sys.argv[4], "bptt", sys.argv[2], gpu_checks.CPU_TINY)
torch.distributed.destroy_process_group()
print(json.dumps(res))
"""


def _bf16(tmp_path, mode="plain") -> dict:
    env = {**clean_env(), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # the CPU side of the check
    args = [str(ROOT / "eval" / "gpu_checks.py"), str(tmp_path / "run"), mode, str(RECIPES / "demo-db.yaml")]
    proc = subprocess.run(
        [sys.executable, "-c", BF16_DRIVER, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bf16_hook_sees_bfloat16_inside_the_engine(tmp_path):
    res = _bf16(tmp_path)
    assert res["qkv_dtypes"] and set(res["qkv_dtypes"]) == {"torch.bfloat16"}
    assert res["weight_dtypes"] == ["torch.float32"]
    assert res["nested_autocast_warnings"] == []


def test_bf16_check_catches_deepspeed_disabling_an_outer_autocast(tmp_path):
    res = _bf16(tmp_path, "outer-cuda-autocast")
    assert res["nested_autocast_warnings"], "the captured DeepSpeed log should hold its warning"


def test_report_lines_and_exit_status(tmp_path, capsys):
    rep = gpu_checks.Report()
    rep.check(True, "x", "fine")
    rep.add("SKIP", "y", "no GPU")
    assert not rep.failed
    rep.check(False, "z", "broken")
    assert rep.failed
    rep.dump(str(tmp_path / "r.json"))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["PASS", "SKIP", "FAIL"]
    assert '"status": "FAIL"' in (tmp_path / "r.json").read_text()


def test_attention_on_cpu_is_sdpa_and_xformers_is_skipped():
    rep = gpu_checks.Report()
    assert gpu_checks.check_attention(rep, CPU) == "sdpa"
    assert [(s, n) for s, n, _ in rep.lines] == [("PASS", "kernels.attention"), ("SKIP", "kernels.xformers")]
    assert "sdpa" in gpu_checks.variants("bptt", "xformers", False)
    assert set(gpu_checks.variants("diffusion_blocks", "sdpa", True)) == {"loss_chunk", "compile_core"}


@pytest.mark.parametrize("name", list(gpu_checks.KERNEL_OBJECTIVES))
def test_cached_decoding_matches_uncached(name):
    gap, dtype = gpu_checks.cache_gap(name, CPU, torch.float32)
    assert gap <= gpu_checks.TOLERANCE[torch.float32][2] and dtype == "float32"


@pytest.mark.parametrize("opts", [{"loss_chunk": 48}, {"checkpoint_core": True}])
def test_memory_saving_options_keep_the_loss(opts):
    step = gpu_checks.deep_step("bptt")
    assert (
        gpu_checks.OBJECTIVES["bptt"].draw_iterations(
            gpu_checks.OBJECTIVES["bptt"].config(**gpu_checks.KERNEL_OBJECTIVES["bptt"]), step
        )
        > gpu_checks.KERNEL_OBJECTIVES["bptt"]["backprop_depth"]
    )  # no-grad iterations run too
    base = gpu_checks.train_pass("bptt", CPU, torch.float32, step)
    got = gpu_checks.train_pass("bptt", CPU, torch.float32, step, **opts)
    assert got == pytest.approx(base, rel=1e-5)


def test_variant_check_fails_on_a_wrong_loss(monkeypatch):
    """A variant whose loss moves is a FAIL line, not a pass within some tolerance."""
    real = gpu_checks.train_pass

    def off_by_one_percent_when_chunked(*args, **opts):
        loss, grad_norm = real(*args, **opts)
        return (loss * 1.01 if "loss_chunk" in opts else loss), grad_norm

    monkeypatch.setattr(gpu_checks, "train_pass", off_by_one_percent_when_chunked)
    rep = gpu_checks.Report()
    monkeypatch.setattr(gpu_checks, "KERNEL_OBJECTIVES", {"bptt": gpu_checks.KERNEL_OBJECTIVES["bptt"]})
    gpu_checks.check_variants(rep, CPU, torch.float32, "sdpa", compile_core=False)
    status = {n: s for s, n, _ in rep.lines}
    assert status["kernels.bptt.loss_chunk"] == "FAIL" and status["kernels.bptt.checkpoint_core"] == "PASS"


def test_smoke_script_refuses_a_python_without_torch(tmp_path):
    env = {**clean_env(), "PY": "/bin/true-not-a-python", "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(SMOKE), "--cpu"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert (tmp_path / "summary.txt").read_text().splitlines()[-1].startswith("FAIL  env")
    bad = subprocess.run(["bash", str(SMOKE), "--gpu-please"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


@pytest.mark.slow
def test_cpu_dry_run_passes(tmp_path, data_root):
    env = {**clean_env(), "OUT": str(tmp_path / "smoke"), "HUGINN_DB_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    env.pop("PY", None)
    proc = subprocess.run(["bash", str(SMOKE), "--cpu"], env=env, capture_output=True, text=True, timeout=600)
    summary = (tmp_path / "smoke" / "summary.txt").read_text().splitlines()
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert not [line for line in summary if line.startswith("FAIL")], summary
    passed = {line.split()[1] for line in summary if line.startswith("PASS")}
    assert {"a", "b", "c", "d", "e"} <= passed, summary
    assert os.path.isfile(tmp_path / "smoke" / "e-bench.json")
