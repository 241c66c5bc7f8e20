"""Faults during real training runs (issue 6, items 3-5): damaged checkpoints, a full disk,
non-finite numbers, a rank dying, a different world size. Each asserts the exit code, the
one-line message, and that files written before the fault are byte-identical afterwards.

Exit codes: 0 done, 2 bad input / refused resume, 3 non-finite past the skip policy,
4 checkpoint write failed, 5 lost contact with another rank.
"""

import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from huginn_db.checkpoint import MANIFEST, consolidated_state_dict, find_checkpoint, read_manifest, to_universal, verify
from tests.conftest import RECIPES, clean_env, free_port, metrics, snapshot, train_command
from tests.test_distributed import TINY

pytestmark = pytest.mark.slow
COMMON = [*TINY, "train.micro_batch_size=8"]
# runs resumed with a later train.max_steps: a schedule whose steps taken keep their lr
EXTEND = ["train.schedule=constant", "train.extend_ok=true"]


def train(run, *overrides, objective="db", preexec_fn=None, prelude=None, nproc=1, timeout=600):
    """One `python -m huginn_db.train` (or a 2-process DeepSpeed launch); returns the process.
    prelude: Python run first in the same interpreter (a fault injected into the real trainer)."""
    args = [str(RECIPES / f"demo-{objective}.yaml"), f"run_dir={run}", *COMMON, *overrides]
    if prelude and nproc == 1:
        cmd = [
            sys.executable,
            "-c",
            prelude + "\nimport sys\nfrom huginn_db.train import main\nsys.exit(main(sys.argv[1:]))",
            *args,
        ]
    else:
        cmd = train_command(args, nproc)
    return subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)


def error_line(proc) -> str:
    lines = [l for l in proc.stderr.splitlines() if "huginn-db: error:" in l]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def ok(proc):
    assert proc.returncode == 0, (proc.stdout[-1500:], proc.stderr[-3000:])
    return proc


# --- 3. checkpoint safety ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """6 steps with checkpoints at 2, 4 and 6 (latest)."""
    run = tmp_path_factory.mktemp("base") / "run"
    ok(train(run, "train.max_steps=6", "train.save_every=2", *EXTEND))
    assert (run / "checkpoints" / "latest").read_text() == "step6"
    assert all(verify(run / "checkpoints" / f"step{s}") is None for s in (2, 4, 6))
    return run


def _copy(base, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    return run


def _truncate(run):
    p = run / "checkpoints" / "step6" / "mp_rank_00_model_states.pt"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return "mp_rank_00_model_states.pt truncated"


def _flip(run):
    p = run / "checkpoints" / "step6" / "mp_rank_00_model_states.pt"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    return "corrupted (xxh3_128 mismatch)"


def _latest_garbage(run):
    (run / "checkpoints" / "latest").write_bytes(b"\x00\x17garbage")
    shutil.rmtree(run / "checkpoints" / "step6")
    return "not a checkpoint tag"


def _latest_missing(run):
    shutil.rmtree(run / "checkpoints" / "step6")
    return "latest names step6, which does not exist"


def _no_manifest(run):  # killed between DeepSpeed's writes and the manifest (a pre-rename crash)
    (run / "checkpoints" / "step6" / MANIFEST).unlink()
    return "no manifest.json"


DAMAGE = {
    "truncated_file": _truncate,
    "flipped_byte": _flip,
    "latest_garbage": _latest_garbage,
    "latest_names_missing_tag": _latest_missing,
    "unfinished_save": _no_manifest,
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_latest_checkpoint_falls_back_to_the_previous(damage, base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    warning = DAMAGE[damage](run)
    step4 = snapshot(run / "checkpoints" / "step4")
    proc = ok(train(run, "train.max_steps=8", "train.save_every=2", *EXTEND, "resume=auto"))
    assert warning in proc.stderr and "skipping checkpoint" in proc.stderr
    assert "resumed from step4 (step 4)" in proc.stderr
    assert snapshot(run / "checkpoints" / "step4") == step4  # the good checkpoint was only read
    assert [r["step"] for r in metrics(run) if "loss" in r] == list(range(1, 9))
    assert (run / "checkpoints" / "latest").read_text() == "step8"
    assert verify(run / "checkpoints" / "step6") is None  # rewritten whole on the way


def test_leftover_temporary_save_is_ignored_and_removed(base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    tmp = run / "checkpoints" / ".tmp-step8"  # SIGKILL in the middle of writing step 8
    tmp.mkdir()
    (tmp / "mp_rank_00_model_states.pt").write_bytes(b"half a file")
    proc = ok(train(run, "train.max_steps=8", *EXTEND, "resume=auto"))
    assert "resumed from step6 (step 6)" in proc.stderr
    assert not tmp.exists() and verify(run / "checkpoints" / "step8") is None


def test_no_complete_checkpoint_refuses_to_resume_and_changes_nothing(base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    for s in (2, 4, 6):
        (run / "checkpoints" / f"step{s}" / MANIFEST).unlink()
    before = snapshot(run)
    proc = train(run, "train.max_steps=8", *EXTEND, "resume=auto")
    assert proc.returncode == 2
    assert "no complete checkpoint in" in error_line(proc) and "overwrite=true" in error_line(proc)
    assert snapshot(run) == before


def test_export_refuses_a_damaged_tag_and_falls_back_without_one(base_run, tmp_path, capsys):
    from huginn_db.cli import main as cli

    run = _copy(base_run, tmp_path)
    _flip(run)
    assert cli(["export", str(run), "--out", str(tmp_path / "out"), "--tag", "step6"]) == 2
    assert "step6: " in capsys.readouterr().err and not (tmp_path / "out" / "model.safetensors").exists()
    assert cli(["export", str(run), "--out", str(tmp_path / "out")]) == 0  # newest complete: step4
    assert (tmp_path / "out" / "model.safetensors").is_file()


def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_during_save_keeps_the_previous_checkpoint(base_run, tmp_path):
    run = _copy(base_run, tmp_path)
    before = snapshot(run / "checkpoints")
    big = max(p.stat().st_size for p in (run / "checkpoints" / "step6").iterdir())
    proc = train(run, "train.max_steps=8", *EXTEND, "resume=auto", preexec_fn=_file_size_limit(big // 4))
    assert proc.returncode == 4, proc.stderr[-3000:]
    line = error_line(proc)
    assert "could not write the checkpoint of step 8" in line and "step6 is intact and `latest` names it" in line
    assert snapshot(run / "checkpoints") == before  # nothing half-written left, step6 untouched
    ok(train(run, "train.max_steps=8", *EXTEND, "resume=auto"))  # with space again, the run finishes
    assert (run / "checkpoints" / "latest").read_text() == "step8"


# --- 4. numerics --------------------------------------------------------------------------------

EXPLODE = ["train.lr=1e30", "train.warmup_steps=1", "train.grad_clip=0"]  # step 1's update blows up the weights


def test_non_finite_loss_stops_at_its_step_and_keeps_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = train(run, "train.max_steps=10", "train.save_every=1", *EXPLODE)
    assert proc.returncode == 3
    line = error_line(proc)
    assert "loss (micro-batch 0) became non-finite at step 2 (train.skip_nonfinite=0)" in line
    assert str(run / "checkpoints" / "step1") in line
    assert (run / "checkpoints" / "latest").read_text() == "step1" and verify(run / "checkpoints" / "step1") is None


def test_non_finite_loss_is_skipped_up_to_the_policy_then_stops(tmp_path):
    run = tmp_path / "run"
    proc = train(run, "train.max_steps=10", "train.skip_nonfinite=2", *EXPLODE)
    assert proc.returncode == 3
    assert "became non-finite at step 4 (after skipping 2 step(s), the train.skip_nonfinite=2 allowed)" in error_line(
        proc
    )
    assert proc.stderr.count("update skipped") == 2
    rows = metrics(run)
    assert [r["skipped"] for r in rows] == [0, 1, 2] and rows[1]["loss"] is None


# finite loss, non-finite gradient: d/dx √x at 0 is inf, times 0 is NaN in every gradient
NAN_GRAD_AT_STEP_3 = """
import torch
from huginn_db.objectives import diffusion_blocks as objectives
_loss = objectives.DiffusionBlocksObjective.loss
def loss(self, model, batch, step, slot=0):
    value, stats = _loss(self, model, batch, step, slot)
    if step == 2:
        value = value + 0.0 * torch.sqrt(value - value.detach())
    return value, stats
objectives.DiffusionBlocksObjective.loss = loss
"""


@pytest.mark.parametrize("stage", ["0", "2", "3-cpu"])
def test_non_finite_gradient_step_is_skipped_without_touching_the_weights(stage, tmp_path):
    run = tmp_path / "run"
    ok(
        train(
            run,
            "train.max_steps=4",
            "train.save_every=1",
            "train.skip_nonfinite=1",
            f"deepspeed=deepspeed/zero{stage}.json",
            prelude=NAN_GRAD_AT_STEP_3,
        )
    )
    rows = metrics(run)
    assert [r["skipped"] for r in rows] == [0, 0, 1, 1]
    assert all(r["loss"] is not None for r in rows)  # the loss itself was finite
    w2, w3, w4 = (consolidated_state_dict(run, f"step{s}") for s in (2, 3, 4))
    assert all(torch.equal(w2[k], w3[k]) for k in w2)  # the skipped step changed nothing
    assert any(not torch.equal(w3[k], w4[k]) for k in w3) and all(torch.isfinite(v).all() for v in w4.values())


def test_non_finite_gradient_stops_when_no_skips_are_allowed(tmp_path):
    run = tmp_path / "run"
    proc = train(run, "train.max_steps=4", "train.save_every=1", prelude=NAN_GRAD_AT_STEP_3)
    assert proc.returncode == 3
    line = error_line(proc)
    assert "gradient norm became non-finite at step 3 (train.skip_nonfinite=0)" in line and "step2" in line
    assert (run / "checkpoints" / "latest").read_text() == "step2"


def test_bf16_and_fp32_agree_on_a_short_run(tmp_path):
    """bf16 autocast (fp32 master weights) vs fp32, 6 steps: every logged loss within 2 %."""
    runs = {p: tmp_path / p for p in ("fp32", "bf16")}
    for p, run in runs.items():
        ok(train(run, "train.max_steps=6", "train.micro_batch_size=4", "eval.num_steps=[]", f"train.precision={p}"))
    a, b = ([r["loss"] for r in metrics(runs[p])] for p in ("fp32", "bf16"))
    assert len(a) == 6 and all(abs(x - y) <= 0.02 * x for x, y in zip(a, b)), (a, b)


# --- 5. distributed faults (2 CPU processes) ------------------------------------------------------


def test_a_dead_rank_makes_the_other_exit_with_a_message(tmp_path):
    run, port = tmp_path / "run", free_port()
    args = [
        str(RECIPES / "demo-db.yaml"),
        f"run_dir={run}",
        *COMMON,
        "train.max_steps=100000",
        "train.save_every=5",
        "train.dist_timeout=60",
    ]
    procs = []
    for rank in (0, 1):
        env = {
            **clean_env(),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "huginn_db.train", *args],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        deadline = time.time() + 300
        while not (run / "metrics.jsonl").is_file() or len(metrics(run)) < 6:
            assert time.time() < deadline and procs[0].poll() is None, "training did not start"
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGKILL)
        t0 = time.time()
        _, err = procs[0].communicate(timeout=90)
        assert time.time() - t0 < 90
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode == 5, err[-3000:]
    line = [l for l in err.splitlines() if "huginn-db: error:" in l][0]
    assert "lost contact with another rank at step" in line and "resume=auto" in line
    assert verify(run / "checkpoints" / (run / "checkpoints" / "latest").read_text()) is None


@pytest.fixture(scope="module")
def two_rank_zero2(tmp_path_factory):
    run = tmp_path_factory.mktemp("zero2") / "run"
    ok(train(run, "train.max_steps=2", "deepspeed=deepspeed/zero2.json", *EXTEND, nproc=2))
    return run


def test_resume_with_another_global_batch_is_refused_with_the_setting_that_keeps_it(two_rank_zero2, tmp_path):
    """Step s trains samples [s·G, (s+1)·G): 2 ranks × 8 → 1 rank × 8 would skip half an epoch."""
    run = _copy(two_rank_zero2, tmp_path)
    before = snapshot(run)
    proc = train(run, "train.max_steps=4", "deepspeed=deepspeed/zero2.json", *EXTEND, "resume=auto")
    assert proc.returncode == 2
    line = error_line(proc)
    assert "checkpoint step2 trained with a global batch of 16 samples per step" in line
    assert "8 × 1 × 1 ranks = 8" in line and "train.grad_accum=2" in line
    assert snapshot(run) == before


def test_resume_on_another_world_size_and_zero_stage_at_once_is_refused(two_rank_zero2, tmp_path):
    run = _copy(two_rank_zero2, tmp_path)
    before = snapshot(run)
    proc = train(
        run, "train.max_steps=4", "deepspeed=deepspeed/zero1.json", "train.grad_accum=2", *EXTEND, "resume=auto"
    )
    assert proc.returncode == 2
    assert "written under ZeRO-2 by 2 ranks, this run is ZeRO-1 on 1" in error_line(proc)
    assert snapshot(run) == before


def test_universal_conversion_is_verified_and_redone_when_damaged(two_rank_zero2, tmp_path):
    ckpt = _copy(two_rank_zero2, tmp_path) / "checkpoints"
    tag = to_universal(ckpt, "step2")
    assert tag == "step2-universal" and verify(ckpt / tag) is None
    assert read_manifest(ckpt / tag)["universal_of"] == "step2"
    assert not list(ckpt.glob(".tmp-*")) and not (ckpt / "latest_universal").exists()

    def files():
        return {str(p.relative_to(ckpt)): p.read_bytes() for p in (ckpt / tag).rglob("*.pt")}

    first = files()
    victim = next((ckpt / tag / "zero").rglob("exp_avg.pt"))
    victim.write_bytes(victim.read_bytes()[:-8])
    assert verify(ckpt / tag) is not None
    assert to_universal(ckpt, "step2") == tag and verify(ckpt / tag) is None
    assert files() == first
    assert find_checkpoint(ckpt)[0] == "step2"  # never a resume candidate itself


def test_resume_on_fewer_ranks_under_zero0_works(tmp_path):
    run = tmp_path / "run"
    ok(train(run, "train.max_steps=2", *EXTEND, nproc=2))
    proc = ok(train(run, "train.max_steps=4", "train.grad_accum=2", *EXTEND, "resume=auto"))
    assert "resumed from step2 (step 2)" in proc.stderr
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4]
