"""Multi-process DeepSpeed on CPU (gloo): ZeRO stages, loss-curve equivalence, kill/resume, export."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from huginn_db.checkpoint import consolidated_state_dict, load_run
from tests.conftest import RECIPES, clean_env, metrics, train_command

pytestmark = pytest.mark.slow
SHM = Path("/dev/shm")

TINY = [
    "model.hidden=64",
    "model.mlp_hidden=128",
    "data.reasoning.test_examples=10",
    "data.reasoning.test_difficulties=[1,2]",
    "eval.num_steps=[1,2]",
    "objective.bptt.mean_recurrence=4",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.precision=fp32",
    "train.threads=1",
]


def launch(objective: str, run: Path, *overrides: str, nproc: int = 1, wait: bool = True):
    """objective: db or bptt (its demo recipe), or any registered name (the demo recipe with it)."""
    recipe, name = (objective, []) if objective in ("db", "bptt") else ("db", [f"objective.name={objective}"])
    args = [str(RECIPES / f"demo-{recipe}.yaml"), f"run_dir={run}", *TINY, *name, *overrides]
    env, cmd = clean_env(), train_command(args, nproc)
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


@pytest.mark.parametrize(
    "objective,stage",
    [
        ("db", "3-cpu"),
        ("bptt", "3-cpu"),
        ("db", "1"),
        ("bptt", "2"),
        ("db", "2-offload"),
        ("deep_supervision", "3-cpu"),
        ("oracle", "3-cpu"),  # a coda + head gather after every iteration, on every rank alike
    ],
)
def test_two_process_zero(objective, stage, tmp_path):
    run = tmp_path / "run"
    proc = launch(
        objective,
        run,
        "train.max_steps=4",
        "train.micro_batch_size=8",
        f"deepspeed=deepspeed/zero{stage}.json",
        nproc=2,
    )
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["tokens"] == 4 * 2 * 8 * rows[0]["tokens"] // (2 * 8)  # both ranks counted
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    if objective == "bptt":  # lock-step r: every rank ran the same number of iterations (no hang)
        assert all(r["r"] >= 1 for r in rows)
    assert json.loads((run / "eval" / "final.json").read_text())["accuracy"]
    state = consolidated_state_dict(run)
    _, model, _ = load_run(run)
    assert state["wte.weight"].shape == model.wte.weight.shape and state["wte.weight"].abs().sum() > 0
    # DeepSpeed's CPU collectives left none (named by the master port: other tests may run beside)
    port = proc.args[proc.args.index("--master_port") + 1]
    assert not list(SHM.glob(f"deepspeed_allreduce_buffer_*_{port}_*"))


@pytest.mark.parametrize("objective", ["db", "deep_supervision"])
def test_two_process_loss_curve_matches_one_process(objective, tmp_path):
    """Data (and deep supervision's slots) follow the global slot: 2 ranks × 1 micro-batch
    train exactly what 1 rank × 2 micro-batches does."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = [
        "train.max_steps=10",
        "train.micro_batch_size=8",
        "train.lr=0.003",
        "objective.deep_supervision.segments=3",
    ]
    launch(objective, one, *common, "train.grad_accum=2", nproc=1)
    launch(objective, two, *common, "train.grad_accum=1", nproc=2)
    a, b = metrics(one), metrics(two)
    assert len(a) == len(b) == 10
    assert a[-1]["tokens"] == b[-1]["tokens"]
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) < 1e-5, (x["step"], x["loss"], y["loss"])
    assert a[0]["loss"] != a[-1]["loss"]  # it actually trained


# deep supervision with k = 2 and EqR's options: the state noise after the kill is drawn again
EQR = tuple(
    f"objective.deep_supervision.{kv}"
    for kv in ("grad_steps=2", "damping=0.05", "state_noise=0.1", "loss_weights=linear")
)
DB_UNROLL = ("objective.diffusion_blocks.unroll=3", "objective.diffusion_blocks.self_condition=latent")


@pytest.mark.parametrize(
    "objective,stage,extra",
    [
        pytest.param("bptt", "0", (), id="bptt-0"),
        pytest.param("bptt", "3-cpu", (), id="bptt-3-cpu"),
        pytest.param("deep_supervision", "0", (), id="deep_supervision-0"),
        pytest.param("deep_supervision", "0", EQR, id="deep_supervision-0-eqr"),
        pytest.param("db", "0", DB_UNROLL, id="db_unroll-0"),
    ],
)
def test_killed_run_resumes_to_identical_result(objective, stage, extra, tmp_path):
    common = [
        *extra,
        "train.max_steps=12",
        "train.micro_batch_size=8",
        "train.save_every=4",
        f"deepspeed=deepspeed/zero{stage}.json",
        "objective.deep_supervision.segments=3",  # refills on both sides of the kill
    ]
    full, killed = tmp_path / "full", tmp_path / "killed"
    launch(objective, full, *common)

    proc = launch(objective, killed, *common, wait=False)
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not (latest.is_file() and latest.read_text().strip() == "step8") and time.time() < deadline:
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest.read_text().strip() == "step8"
    launch(objective, killed, *common, "resume=auto")

    a, b = metrics(full), metrics(killed)
    assert [r["step"] for r in b] == list(range(1, 13))
    assert [(r["loss"], r["tokens"], r["r"]) for r in a] == [(r["loss"], r["tokens"], r["r"]) for r in b]
    wa, wb = consolidated_state_dict(full), consolidated_state_dict(killed)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _cut(run: Path, src: Path, tag: str) -> None:
    """`run` = `src` as if it had died right after saving `tag` (later checkpoints gone)."""
    shutil.copytree(src, run)
    ckpt = run / "checkpoints"
    for p in ckpt.glob("step*"):
        if p.name != tag:
            shutil.rmtree(p)
    (ckpt / "latest").write_text(tag)


@pytest.mark.parametrize("stage", ["1", "2", "3-cpu"])
def test_resume_on_another_world_size_continues_the_run(stage, tmp_path):
    """2 ranks → 1 → 2 under ZeRO-N, keeping the global batch (train.grad_accum makes up the
    ranks): the universal checkpoint re-splits the optimizer state, every step trains the
    samples it would have, and loss and weights follow the uninterrupted run."""
    common = [
        "train.max_steps=12",
        "train.micro_batch_size=8",
        "train.save_every=4",
        f"deepspeed=deepspeed/zero{stage}.json",
    ]
    full, run = tmp_path / "full", tmp_path / "run"
    launch("db", full, *common, nproc=2)
    _cut(run, full, "step4")
    one = launch("db", run, *common, "train.grad_accum=2", "resume=auto")  # 2 → 1: steps 5–12
    assert "loading its universal form" in one.stderr
    assert (run / "checkpoints" / "step4-universal" / "zero").is_dir()
    shutil.rmtree(run / "checkpoints" / "step12")
    (run / "checkpoints" / "latest").write_text("step8")  # as if it had died after step 8
    launch("db", run, *common, "resume=auto", nproc=2)  # 1 → 2: steps 9–12

    a, b = metrics(full), metrics(run)
    assert [r["step"] for r in b] == list(range(1, 13))
    for x, y in zip(a, b):
        assert x["tokens"] == y["tokens"] and abs(x["loss"] - y["loss"]) < 1e-5, (x["step"], x["loss"], y["loss"])
    wa, wb = consolidated_state_dict(full), consolidated_state_dict(run)
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_deep_supervision_two_process_zero3_resume_carries_every_slot_state(tmp_path):
    """Resume from an earlier checkpoint of a 2-rank ZeRO-3 run: each rank reloads its slots'
    carried states, and the rest of the run repeats exactly."""
    common = [
        "train.max_steps=6",
        "train.micro_batch_size=4",
        "train.save_every=3",
        "deepspeed=deepspeed/zero3-cpu.json",
        "objective.deep_supervision.segments=4",
    ]
    run = tmp_path / "run"
    launch("deep_supervision", run, *common, nproc=2)
    full = metrics(run)
    ckpt = run / "checkpoints"
    assert sorted(p.name for p in (ckpt / "step3").glob("objective-rank*.pt")) == [
        "objective-rank0.pt",
        "objective-rank1.pt",
    ]
    shutil.rmtree(ckpt / "step6")  # as if the run had died after the save of step 3
    (ckpt / "latest").write_text("step3")
    launch("deep_supervision", run, *common, "resume=auto", nproc=2)
    again = metrics(run)
    assert [r["step"] for r in again] == list(range(1, 7))
    assert [r["loss"] for r in again] == [r["loss"] for r in full]


def test_export_to_safetensors_loads_without_deepspeed(tmp_path):
    run, out = tmp_path / "run", tmp_path / "export"
    launch("db", run, "train.max_steps=2", "train.micro_batch_size=4")
    proc = subprocess.run(
        [sys.executable, "-m", "huginn_db.cli", "export", str(run), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").is_file() and (out / "config.yaml").is_file()
    _, from_export, obj = load_run(out)
    _, from_ckpt, _ = load_run(run)
    for (k, a), (_, b) in zip(from_export.state_dict().items(), from_ckpt.state_dict().items()):
        assert torch.equal(a, b), k
    ids = torch.tensor([[1, 5, 6, 7]])
    g = lambda: torch.Generator().manual_seed(0)
    assert torch.equal(obj.logits(from_export, ids, 2, generator=g()), obj.logits(from_ckpt, ids, 2, generator=g()))


def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path):
    run = tmp_path / "run"
    # constant lr: the resume below moves max_steps, which is refused where it reshapes an lr applied
    common = ["train.max_steps=400", "train.micro_batch_size=8", "train.schedule=constant"]
    proc = launch("db", run, *common, wait=False)
    deadline = time.time() + 300
    while (
        not (run / "metrics.jsonl").is_file() or len((run / "metrics.jsonl").read_text().splitlines()) < 3
    ) and time.time() < deadline:
        assert proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    stopped = int((run / "checkpoints" / "latest").read_text().strip().removeprefix("step"))
    assert 3 <= stopped < 400
    launch("db", run, *common[1:], "train.max_steps=" + str(stopped + 2), "train.extend_ok=true", "resume=auto")
    assert [r["step"] for r in metrics(run)] == list(range(1, stopped + 3))


def test_non_finite_loss_stops_the_run_with_the_step(tmp_path):
    run = tmp_path / "run"
    args = [
        str(RECIPES / "demo-db.yaml"),
        f"run_dir={run}",
        *TINY,
        "train.max_steps=30",
        "train.micro_batch_size=8",
        "train.lr=1e30",
        "train.warmup_steps=1",
        "train.grad_clip=0",
    ]
    proc = subprocess.run([sys.executable, "-m", "huginn_db.train", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "loss (micro-batch 0) became non-finite at step" in proc.stderr
    assert not (run / "checkpoints" / "latest").exists()  # nothing written after the last good state
