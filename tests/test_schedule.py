"""The lr schedules (cosine, wsd, trapezoid, constant) as functions, their config checks, a real
wsd run's logged lr, and the resume rule: a changed schedule key is refused in one line naming
it, unless train.extend_ok moves the end of a run whose decay has not begun."""

import dataclasses
import math
import shutil

import pytest
import torch

from huginn_db.components.optim import apply_schedule, build_optimizer, lr_lambda, schedule_change, schedule_state
from huginn_db.config import TrainConfig, from_dict
from huginn_db.errors import ConfigError
from tests.conftest import ROOT, metrics, snapshot, train_here


def curve(steps, **kw):
    f = lr_lambda(TrainConfig(max_steps=100, warmup_steps=10, min_lr_ratio=0.1, **kw))
    return [f(s) for s in steps]


def test_cosine_is_the_warmup_then_half_cosine_it_was():
    f = lr_lambda(TrainConfig(max_steps=100, warmup_steps=10, min_lr_ratio=0.1))
    assert [f(s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    for s in (10, 37, 55, 99, 100, 120):
        p = min(1.0, (s - 10) / 90)
        assert f(s) == 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))
    assert TrainConfig().schedule == "cosine"


@pytest.mark.parametrize(
    "shape, mid", [("linear", 0.55), ("cosine", 0.55), ("1-sqrt", 0.1 + 0.9 * (1 - math.sqrt(0.5)))]
)
def test_wsd_holds_the_peak_then_decays_over_the_last_fraction(shape, mid):
    # decay_fraction 0.2 of 100 steps: 20 steps from step 80 (still the peak) to 100 (the minimum)
    got = curve([0, 9, 10, 50, 80, 90, 100], schedule="wsd", decay_fraction=0.2, decay_shape=shape)
    assert got[:5] == [0.1, 1.0, 1.0, 1.0, 1.0]
    assert got[5] == pytest.approx(mid) and got[6] == pytest.approx(0.1)
    decay = curve(range(80, 101), schedule="wsd", decay_fraction=0.2, decay_shape=shape)
    assert all(a > b for a, b in zip(decay[1:], decay[2:]))  # strictly down once it starts


def test_trapezoid_cools_down_linearly_towards_zero_floored_at_the_minimum():
    got = curve([9, 50, 80, 90, 95, 98, 99, 100], schedule="trapezoid", decay_fraction=0.2)
    assert got == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.25, 0.1, 0.1, 0.1])  # 1 - 18/20 = 0.1, then the floor


def test_constant_after_the_warmup():
    assert curve([0, 9, 10, 99, 100], schedule="constant") == [0.1, 1.0, 1.0, 1.0, 1.0]


def test_decay_steps_round_up_so_a_short_run_still_decays():
    f = lr_lambda(TrainConfig(max_steps=10, warmup_steps=2, schedule="wsd", decay_fraction=0.05, min_lr_ratio=0.0))
    assert [f(s) for s in (8, 9, 10)] == [1.0, 1.0, 0.0]  # ceil(0.5) = 1 decay step


@pytest.mark.parametrize(
    "over, message",
    [
        ({"schedule": "step"}, "train.schedule must be cosine|wsd|trapezoid|constant, got 'step'"),
        ({"decay_shape": "sqrt"}, "train.decay_shape must be linear|cosine|1-sqrt, got 'sqrt'"),
        ({"decay_fraction": 0}, "train.decay_fraction must be in (0, 1], got 0"),
        ({"decay_fraction": 1.5}, "train.decay_fraction must be in (0, 1], got 1.5"),
        (
            {"schedule": "wsd", "max_steps": 100, "warmup_steps": 90, "decay_fraction": 0.2},
            "train.warmup_steps=90 plus the wsd decay (decay_fraction × max_steps = 20 steps) exceeds max_steps=100",
        ),
    ],
)
def test_schedule_keys_are_checked_in_one_line(over, message):
    with pytest.raises(ConfigError) as err:
        from_dict(TrainConfig, over, "train")
    assert str(err.value) == message


WSD = dict(schedule="wsd", max_steps=100, warmup_steps=10, decay_fraction=0.2, decay_shape="linear")


def test_a_changed_schedule_key_is_refused_naming_it_and_both_values():
    saved = schedule_state(TrainConfig(**WSD))
    assert schedule_change(saved, TrainConfig(**WSD), 50) is None
    why = schedule_change(saved, TrainConfig(**{**WSD, "max_steps": 200}), 50)
    assert "train.max_steps=200 but the checkpoint's run has train.max_steps=100" in why and "extend_ok" in why
    why = schedule_change(saved, TrainConfig(**{**WSD, "lr": 2e-3, "extend_ok": True}), 50)
    assert why.startswith("train.lr=0.002 but the checkpoint's run has train.lr=0.001") and "extend_ok" not in why
    assert "train.schedule=cosine" in schedule_change(saved, TrainConfig(**{**WSD, "schedule": "cosine"}), 50)
    # a key the saved schedule does not use is no change to it
    cos = schedule_state(TrainConfig(max_steps=100))
    assert "decay_shape" not in cos
    assert schedule_change(cos, TrainConfig(max_steps=100, decay_shape="cosine"), 50) is None


def test_extend_ok_moves_the_end_only_where_no_applied_lr_changes():
    saved = schedule_state(TrainConfig(**WSD))  # the decay starts after step 80
    longer = TrainConfig(**{**WSD, "max_steps": 300, "extend_ok": True})
    assert schedule_change(saved, longer, 80) is None  # the steps taken all ran at the peak
    why = schedule_change(saved, longer, 85)
    assert why.startswith("train.extend_ok=true cannot change train.max_steps from 100 to 300: step 82 of the 85")
    # a cosine run leaves its peak right after the warm-up
    cos = schedule_state(TrainConfig(max_steps=100, warmup_steps=10))
    ext = TrainConfig(max_steps=300, warmup_steps=10, extend_ok=True)
    assert schedule_change(cos, ext, 10) is None and "cannot change" in schedule_change(cos, ext, 12)
    const = schedule_state(TrainConfig(max_steps=100, schedule="constant"))
    assert schedule_change(const, TrainConfig(max_steps=1000, schedule="constant", extend_ok=True), 100) is None


def test_a_resumed_optimizer_takes_the_next_lr_from_the_new_schedule():
    """The optimizer state of a checkpoint holds the lr its schedule gave the next step; an
    allowed change must not let that step run at it."""
    model = torch.nn.Linear(2, 2)
    old = TrainConfig(**{**WSD, "max_steps": 100, "decay_fraction": 0.25})  # decays after step 75
    opt, sched = build_optimizer(model, old)
    for _ in range(76):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] < old.lr
    new = dataclasses.replace(old, max_steps=200, extend_ok=True)
    assert schedule_change(schedule_state(old), new, 76) is None  # steps 0-75 ran at the peak under both
    opt2, sched2 = build_optimizer(model, new)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    apply_schedule(sched2)
    assert [g["lr"] for g in opt2.param_groups] == [new.lr, new.lr] == sched2.get_last_lr()


# --- real runs: golden.yaml's tiny fp32 model, in this process ---------------------------------

RECIPE = ROOT / "tests" / "assets" / "golden.yaml"
WSD_RUN = [  # decay over the last 4 of 8 steps; checkpoints after steps 4 and 8
    "train.max_steps=8",
    "train.warmup_steps=2",
    "train.schedule=wsd",
    "train.decay_fraction=0.5",
    "train.decay_shape=linear",
    "train.save_every=4",
]


def train(run, *overrides) -> int:
    return train_here([str(RECIPE), f"run_dir={run}", *WSD_RUN, *overrides])


def lrs(run) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in metrics(run) if "lr" in r}


@pytest.fixture(scope="module")
def wsd_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("wsd") / "run"
    assert train(run) == 0
    return run


def test_a_wsd_run_logs_the_lr_of_its_schedule(wsd_run):
    f = lr_lambda(TrainConfig(max_steps=8, warmup_steps=2, schedule="wsd", decay_fraction=0.5, decay_shape="linear"))
    got = lrs(wsd_run)
    assert sorted(got) == list(range(1, 9))
    # a record is written after its step's update, when the scheduler has moved on to the next step's lr
    assert got == pytest.approx({s: 0.003 * f(s) for s in got}, rel=1e-12)
    assert got[4] == 0.003 and got[8] == pytest.approx(0.0003)


def error_line(capsys) -> str:
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("huginn-db: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_resume_with_another_max_steps_is_refused_naming_the_key(wsd_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(wsd_run, run)
    before = snapshot(run)
    capsys.readouterr()
    assert train(run, "train.max_steps=12", "resume=auto") == 2
    line = error_line(capsys)
    assert "checkpoint step8: train.max_steps=12 but the checkpoint's run has train.max_steps=8" in line, line
    # extend_ok does not reshape a decay already applied: steps 6-8 ran below the peak
    assert train(run, "train.max_steps=12", "train.extend_ok=true", "resume=auto") == 2
    line = error_line(capsys)
    assert "train.extend_ok=true cannot change train.max_steps from 8 to 12: step 6 of the 8" in line, line
    assert snapshot(run) == before  # refused before the run directory is touched


def test_extend_ok_extends_a_wsd_run_whose_decay_has_not_begun(wsd_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(wsd_run, run)
    shutil.rmtree(run / "checkpoints" / "step8")
    (run / "checkpoints" / "latest").write_text("step4")  # the run as it stood after step 4, at the peak
    assert train(run, "train.max_steps=12", "train.extend_ok=true", "resume=auto") == 0
    got, was = lrs(run), lrs(wsd_run)
    new = lr_lambda(TrainConfig(max_steps=12, warmup_steps=2, schedule="wsd", decay_fraction=0.5, decay_shape="linear"))
    assert sorted(got) == list(range(1, 13))
    assert [got[s] for s in range(1, 5)] == [was[s] for s in range(1, 5)]
    assert got == pytest.approx({s: 0.003 * new(s) for s in got}, rel=1e-12)  # the decay now starts after step 6
    assert got[6] == 0.003 and got[12] == pytest.approx(0.0003)
