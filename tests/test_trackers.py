"""Trackers through DeepSpeed's monitor: the DeepSpeed JSON switches them on, the trainer sends
every metrics.jsonl record to them from rank 0, under the run directory by default."""

import csv
import json
import os
from collections import defaultdict

import pytest

from huginn_db.components import engine as E
from huginn_db.components.metrics import tracker_events
from huginn_db.config import load_config
from huginn_db.errors import ConfigError
from tests.conftest import RECIPES, metrics
from tests.test_distributed import launch


def ds_json(tmp_path, **sections) -> str:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 0}, **sections}))
    return str(path)


def test_records_become_numeric_events_named_by_section():
    rec = {"step": 7, "loss": 2.5, "lr": 1e-3, "skipped": 0, "grad_norm": None, "bands": [3, 5], "flag": True}
    assert tracker_events(rec, "train", 7) == [
        ("train/loss", 2.5, 7),
        ("train/lr", 1e-3, 7),
        ("train/skipped", 0.0, 7),
        ("train/bands/0", 3.0, 7),
        ("train/bands/1", 5.0, 7),
    ]
    ev = tracker_events({"step": 4, "tokens": 64, "accuracy": {"8": {"d1": 0.5, "mean": 0.25}}}, "eval", 4)
    assert ev == [("eval/tokens", 64.0, 4), ("eval/accuracy/8/d1", 0.5, 4), ("eval/accuracy/8/mean", 0.25, 4)]


def test_trackers_write_into_the_run_directory_unless_the_json_names_a_place(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", "")  # recorded, so the trainer's setdefault below is undone
    monkeypatch.delenv("WANDB_DIR")
    shared = str(tmp_path / "tb-all")
    path = ds_json(
        tmp_path,
        tensorboard={"enabled": True},
        csv_monitor={"enabled": True, "output_path": shared},
        comet={"enabled": False},
    )
    cfg = load_config(RECIPES / "demo-db.yaml", [f"deepspeed={path}", f"run_dir={tmp_path / 'runs' / 'a'}"])
    monkeypatch.setattr(E.importlib.util, "find_spec", lambda name: object())  # as if installed
    ds = E.deepspeed_config(cfg, 1)
    assert ds["tensorboard"] == {
        "enabled": True,
        "output_path": str(tmp_path / "runs" / "a" / "tensorboard"),
        "job_name": "",
    }
    assert ds["csv_monitor"] == {"enabled": True, "output_path": shared, "job_name": "a"}
    assert ds["comet"] == {"enabled": False}  # off: left as written
    from deepspeed.monitor.config import get_monitor_config

    assert get_monitor_config(ds).enabled  # DeepSpeed's own schema takes the filled-in sections

    path = ds_json(tmp_path, wandb={"enabled": True}, comet={"enabled": True})
    cfg = load_config(RECIPES / "demo-db.yaml", [f"deepspeed={path}", f"run_dir={tmp_path / 'b'}"])
    ds = E.deepspeed_config(cfg, 1)
    assert ds["comet"]["samples_log_interval"] == 1 and ds["comet"]["experiment_name"] == "b"
    assert os.environ["WANDB_DIR"] == str(tmp_path / "b")


def test_a_tracker_without_its_package_is_refused_in_one_line(tmp_path, monkeypatch):
    path = ds_json(tmp_path, wandb={"enabled": True})
    cfg = load_config(RECIPES / "demo-db.yaml", [f"deepspeed={path}", f"run_dir={tmp_path / 'r'}"])
    real = E.importlib.util.find_spec
    monkeypatch.setattr(E.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match="enables 'wandb', but the wandb package is not installed"):
        E.deepspeed_config(cfg, 1)
    assert not (tmp_path / "r").exists()


def loss_series(run):
    return [(r["step"], r["loss"]) for r in metrics(run) if "loss" in r]


@pytest.mark.slow
def test_tensorboard_and_csv_hold_the_metrics_series_across_a_crash_and_resume(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    path = ds_json(tmp_path, tensorboard={"enabled": True}, csv_monitor={"enabled": True})
    common = [
        f"deepspeed={path}",
        "train.micro_batch_size=8",
        "train.save_every=3",
        "eval.every=3",
        "eval.every_examples=2",
        "train.schedule=constant",  # so the resume may move max_steps (extend_ok)
    ]
    launch("db", run, "train.max_steps=6", *common)

    def tensorboard():
        acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
        acc.Reload()
        return acc

    acc, want = tensorboard(), loss_series(run)
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(s, pytest.approx(v, rel=1e-6)) for s, v in want]
    expected = defaultdict(list)  # every number of every record, under its name
    for r in metrics(run):
        for name, value, step in tracker_events(r, "train" if "loss" in r else "eval", r["step"]):
            expected[name].append((step, pytest.approx(value, rel=1e-6)))
    assert {"train/lr", "train/tokens_per_s", "train/sigma_mean", "train/skipped", "eval/accuracy/8/mean"} <= set(
        expected
    )
    for name, series in expected.items():
        assert [(e.step, e.value) for e in acc.Scalars(name)] == series, name
    assert [e.step for e in acc.Scalars("eval/accuracy/8/mean")] == [3]
    assert acc.Scalars("final/accuracy/2/mean")[0].step == 6
    with open(run / "csv_monitor" / "train_loss.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "loss"]
    assert [(int(s), float(v)) for s, v in rows[1:]] == [(s, pytest.approx(v, rel=1e-6)) for s, v in want]

    # a crash after step 5's record and before step 6's save: resume at step 3 re-logs steps 4-6,
    # and TensorBoard drops the orphaned points as metrics.jsonl does
    ckpt = run / "checkpoints"
    (ckpt / "latest").write_text("step3")
    for p in (ckpt / "step6").iterdir():
        p.unlink()
    (ckpt / "step6").rmdir()
    launch("db", run, "train.max_steps=8", "train.extend_ok=true", "resume=auto", *common)
    want = loss_series(run)
    assert [s for s, _ in want] == list(range(1, 9))
    assert [(e.step, e.value) for e in tensorboard().Scalars("train/loss")] == [
        (s, pytest.approx(v, rel=1e-6)) for s, v in want
    ]


@pytest.mark.slow
def test_wandb_offline_run_lands_in_the_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    run = tmp_path / "run"
    launch("db", run, "train.max_steps=2", f"deepspeed={ds_json(tmp_path, wandb={'enabled': True, 'project': 't'})}")
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))
