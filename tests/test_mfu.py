"""Throughput in metrics.jsonl and on paper: datasheet peaks by device name for MFU, the log
window's tokens/s and data-wait share, and `huginn-db flops --gpu`'s time and GPU-hours."""

import json
import logging

import pytest
import torch

from huginn_db.cli import main as cli
from huginn_db.components.metrics import MetricsWriter, mfu_peak
from huginn_db.config import TrainConfig
from huginn_db.gpus import GPUS, gpu_key
from tests.conftest import RECIPES, ROOT, metrics, train_here

NAMES = {  # torch.cuda.get_device_name() → table key
    "NVIDIA H100 80GB HBM3": "h100",
    "NVIDIA H100 PCIe": "h100-pcie",
    "NVIDIA H100 NVL": "h100-nvl",
    "NVIDIA H200": "h200",
    "NVIDIA H200 NVL": "h200-nvl",
    "NVIDIA GH200 480GB": "h200",
    "NVIDIA A100-SXM4-80GB": "a100",
    "NVIDIA A100-SXM4-40GB": "a100",
    "NVIDIA A100-PCIE-40GB": "a100",
    "NVIDIA L40S": "l40s",
    "AMD Instinct MI300X": "mi300x",
    "NVIDIA L40": None,  # not the L40S
    "NVIDIA RTX A1000": None,  # not an A100
    "NVIDIA GeForce RTX 4090": None,
}


@pytest.mark.parametrize("name", NAMES)
def test_device_names_find_their_datasheet_peaks(name):
    assert gpu_key(name) == NAMES[name]


def test_the_table_holds_dense_peaks():
    assert GPUS["h100"].peak("bf16") == pytest.approx(989.5e12)  # half the datasheet's 1,979 "with sparsity"
    assert GPUS["h100-pcie"].peak("bf16") == pytest.approx(756.5e12)
    assert GPUS["a100"].peak("tf32") == 156e12 and GPUS["a100"].peak("fp32") == 19.5e12
    assert GPUS["mi300x"].peak("fp16") == pytest.approx(1307.4e12)
    assert all(g.fp32 < g.tf32 < g.bf16 == g.fp16 for g in GPUS.values())


def test_mfu_peak_follows_the_run_precision_on_a_known_gpu(monkeypatch, caplog):
    cuda, matmul = torch.device("cuda"), torch.backends.cuda.matmul
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    tf32 = matmul.allow_tf32  # a cuBLAS flag torch keeps outside the object: set and restored by hand
    try:
        matmul.allow_tf32 = False
        with caplog.at_level(logging.INFO, logger="huginn_db"):
            assert mfu_peak(TrainConfig(), cuda) == GPUS["h100"].bf16  # auto: bf16 autocast on CUDA
        assert "MFU against the H100 SXM's dense bf16 peak, 989.5 TFLOP/s" in caplog.text
        assert mfu_peak(TrainConfig(precision="fp32"), cuda) == GPUS["h100"].fp32
        matmul.allow_tf32 = True
        assert mfu_peak(TrainConfig(precision="fp32"), cuda) == GPUS["h100"].tf32
    finally:
        matmul.allow_tf32 = tf32
    assert mfu_peak(TrainConfig(peak_flops=1e12), cuda) == 1e12  # set by hand: used as it is
    assert mfu_peak(TrainConfig(), torch.device("cpu")) is None  # no table for CPUs


def test_an_unknown_gpu_gets_no_mfu_and_one_line_saying_what_to_set(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 4090")
    with caplog.at_level(logging.INFO, logger="huginn_db"):
        assert mfu_peak(TrainConfig(), torch.device("cuda")) is None
    assert [r.message for r in caplog.records] == [
        "no MFU: NVIDIA GeForce RTX 4090 is not in huginn_db.gpus' table; set train.peak_flops (e.g. from huginn-db peak)"
    ]


class FakeEngine:
    def get_lr(self):
        return [1e-3]

    def get_global_grad_norm(self):
        return None


def test_a_record_averages_tokens_per_s_and_data_wait_over_its_window(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda *a, **k: None)
    (tmp_path / "metrics.jsonl").touch()
    m = MetricsWriter(tmp_path, 0, torch.device("cpu"), 1, None, 0)
    m.add_step(1.0, 100, 0.25)
    m.add_step(3.0, 300, 0.75)  # the logged step: 300 tokens in 3 s
    rec = m.log(FakeEngine(), 2, 400, 0.0, 3.0, 300, 0.0, 0, {})
    assert rec["tokens_per_s"] == 100 and rec["window_tokens_per_s"] == 400 / 4 and rec["data_wait_share"] == 1 / 4
    m.add_step(2.0, 100, 0.0)
    rec = m.log(FakeEngine(), 3, 500, 0.0, 2.0, 100, 0.0, 0, {})
    assert rec["window_tokens_per_s"] == 50 and rec["data_wait_share"] == 0  # a new window
    m.close()


def test_a_run_records_window_tokens_per_s_and_data_wait_share(tmp_path):
    run = tmp_path / "run"
    recipe = ROOT / "tests" / "assets" / "golden.yaml"
    assert train_here([str(recipe), f"run_dir={run}", "train.max_steps=6", "train.log_every=3"]) == 0
    recs = metrics(run)
    assert [r["step"] for r in recs] == [3, 6]
    for r in recs:
        assert 0 < r["data_wait_share"] < 1 and r["window_tokens_per_s"] > 0, r
        assert "mfu" not in r  # CPU without train.peak_flops


def test_flops_cli_projects_hours_and_gpu_hours_onto_a_gpu(capsys):
    recipe = str(RECIPES / "demo-db.yaml")
    assert cli(["flops", recipe, "train.max_steps=1000", "--gpu", "h100", "--mfu", "0.4", "--gpus", "8", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    pr = rep["projection"]
    assert (pr["gpu"], pr["dtype"], pr["gpus"], pr["mfu"]) == ("h100", "bf16", 8, 0.4)
    for name, o in pr["objectives"].items():
        flops = rep["train"][name]["per_step"]["total"] * 1000  # grad_accum 1
        assert o["flops"] == pytest.approx(flops)
        assert o["wall_hours"] == pytest.approx(flops / (989.5e12 * 0.4 * 8) / 3600)
        assert o["gpu_hours"] == pytest.approx(8 * o["wall_hours"])
    assert pr["tokens"] == 1000 * rep["shape"]["tokens_per_step"]
    assert cli(["flops", recipe, "--gpu", "a100", "--mfu", "0.5", "--dtype", "tf32"]) == 0
    text = capsys.readouterr().out
    assert "projection onto 1 × A100 (dense tf32 peak 156.0 TFLOP/s) at MFU 0.5" in text
    assert "wall hours" in text and "GPU-hours" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gpu", "h800", "--mfu", "0.4"], "--gpu must be one of h100, h100-pcie, h100-nvl, h200, h200-nvl, a100,"),
        (["--gpu", "h100"], "--gpu and --mfu go together"),
        (["--gpu", "h100", "--mfu", "1.5"], "--mfu must be in (0, 1] and --gpus >= 1"),
    ],
)
def test_flops_cli_refuses_a_bad_projection_in_one_line(args, message, capsys):
    assert cli(["flops", str(RECIPES / "demo-db.yaml"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
