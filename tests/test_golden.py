"""Golden loss curves: every objective in the registry, 20 fp32 steps of a tiny model on one
thread under ZeRO-0 (tests/assets/golden.yaml), through the real CLI and DeepSpeed engine; the
per-step loss must match tests/assets/losses/<objective>.txt to a relative 1e-5. A trainer
refactor that is meant to change nothing must leave these curves where they are.

A change meant to move them: `pytest tests/test_golden.py --regen-golden` (or
HUGINN_DB_REGEN_GOLDEN=1), then review and commit the diff of tests/assets/losses/.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from huginn_db.objectives import OBJECTIVES
from tests.conftest import ROOT

RECIPE = ROOT / "tests" / "assets" / "golden.yaml"
LOSSES = ROOT / "tests" / "assets" / "losses"
REGEN = "`pytest tests/test_golden.py --regen-golden -k {0}` (or HUGINN_DB_REGEN_GOLDEN=1)"

_spec = importlib.util.spec_from_file_location("loss_compare", ROOT / "scripts" / "loss_compare.py")
loss_compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loss_compare)


def golden_run(objective: str, run_dir, *overrides: str) -> dict[int, float]:
    # a clean one-process world on the CPU, whatever the test runner's environment: the curves are CPU fp32 curves
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    cmd = [
        sys.executable,
        "-m",
        "huginn_db.train",
        str(RECIPE),
        f"run_dir={run_dir}",
        f"objective.name={objective}",
        *overrides,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return loss_compare.run_losses(run_dir)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_loss_curve_matches_golden(objective, tmp_path, regen_golden):
    path = LOSSES / f"{objective}.txt"
    if not regen_golden and not path.is_file():
        pytest.fail(
            f"no golden loss curve for objective {objective!r} ({path.relative_to(ROOT)}); "
            f"generate it with {REGEN.format(objective)} and commit it"
        )
    losses = golden_run(objective, tmp_path / objective)
    assert sorted(losses) == list(range(1, 21)), sorted(losses)
    if regen_golden:
        loss_compare.write_golden(path, losses)
        return
    bad = loss_compare.mismatches(losses, loss_compare.read_golden(path))
    assert not bad, (
        f"{objective}: loss curve moved from {path.relative_to(ROOT)}:\n  "
        + "\n  ".join(bad)
        + f"\nIf the change is meant to move it: {REGEN.format(objective)}"
    )


def test_loader_workers_leave_the_curve_where_it_is(tmp_path):
    """Two loader processes build the micro-batches ahead of the step: the same batches, the same curve."""
    losses = golden_run("diffusion_blocks", tmp_path / "run", "data.workers=2", "train.grad_accum=2")
    ref = golden_run("diffusion_blocks", tmp_path / "ref", "train.grad_accum=2")
    assert losses == ref


def test_in_training_evaluation_leaves_the_curve_where_it_is(tmp_path):
    """Evaluating every 5 steps draws from its own generators and restores train mode: the
    training run is the golden one, so a FLOPs-to-target curve measures the run it reports."""
    losses = golden_run("bptt", tmp_path / "run", "eval.every=5", "eval.every_examples=4", "eval.every_num_steps=[4]")
    assert losses == golden_run("bptt", tmp_path / "ref")
