"""Checkpoint retention (train.keep_last / keep_every): which checkpoints a save deletes, that a
kill mid-deletion leaves every reader a whole checkpoint, and a real run's directory."""

import shutil

import pytest

from huginn_db import checkpoint as ck
from huginn_db.checkpoint import DELETING_PREFIX, find_checkpoint, prune, remove_partial, verify, write_atomic
from huginn_db.config import load_config
from huginn_db.errors import ConfigError
from tests.conftest import RECIPES
from tests.test_distributed import launch


def fake_run(ckpt, steps, latest):
    """stepN/ directories with a file and a manifest each, `latest` naming one."""
    for s in steps:
        d = ckpt / f"step{s}"
        d.mkdir(parents=True)
        (d / "weights.pt").write_bytes(bytes([s]) * 1000)
        ck.write_manifest(d, {"step": s})
    write_atomic(ckpt / "latest", f"step{latest}")


def dirs(ckpt):
    return sorted(p.name for p in ckpt.iterdir() if p.is_dir())


def test_prune_keeps_the_newest_the_multiples_and_latest(tmp_path):
    ckpt = tmp_path / "checkpoints"
    fake_run(ckpt, [1, 2, 3, 4, 5, 6, 8], latest=8)
    (ckpt / ".tmp-step9").mkdir()  # a save in progress
    (ckpt / "step7").mkdir()  # no manifest: not ours to judge
    (ckpt / "step2-universal").mkdir()  # the conversion of a checkpoint about to go
    (ckpt / "step6-universal").mkdir()
    assert prune(ckpt, 2, 4) == ["step5", "step3", "step2", "step1"]
    assert dirs(ckpt) == [".tmp-step9", "step4", "step6", "step6-universal", "step7", "step8"]
    assert find_checkpoint(ckpt)[0] == "step8"
    assert prune(ckpt, 1) == ["step6", "step4"] and dirs(ckpt) == [".tmp-step9", "step7", "step8"]


def test_prune_never_deletes_what_latest_names(tmp_path):
    ckpt = tmp_path / "checkpoints"
    fake_run(ckpt, [2, 4, 6], latest=2)  # e.g. newer ones written, `latest` not yet moved
    assert prune(ckpt, 1) == ["step6", "step4"]
    assert dirs(ckpt) == ["step2"] and find_checkpoint(ckpt) == ("step2", [])


@pytest.mark.parametrize("files_deleted", [0, 1])
def test_a_kill_mid_deletion_leaves_latest_resolvable_and_resume_finishes_it(files_deleted, tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoints"
    fake_run(ckpt, [2, 4, 6], latest=6)
    rmtree = shutil.rmtree

    def killed(path, *a, **kw):  # renamed, then (part of) its files gone, then the process dies
        for p in sorted(path.iterdir())[:files_deleted]:
            p.unlink()
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        prune(ckpt, 1)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    assert dirs(ckpt) == [DELETING_PREFIX + "step2", "step4", "step6"]
    assert find_checkpoint(ckpt) == ("step6", [])  # the leftover is no candidate, nothing is warned about
    assert all(verify(ckpt / t) is None for t in ("step4", "step6"))
    remove_partial(ckpt)  # what resume=auto does first
    assert dirs(ckpt) == ["step4", "step6"]


def test_retention_settings_are_checked():
    for overrides, msg in [
        (["train.keep_last=0"], "train.keep_last and keep_every must be >= 1 or null"),
        (["train.keep_last=2", "train.keep_every=0"], "must be >= 1 or null"),
        (["train.keep_every=5"], "train.keep_every needs keep_last"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            load_config(RECIPES / "demo-db.yaml", overrides)
    cfg = load_config(RECIPES / "demo-db.yaml", ["train.keep_last=3", "train.keep_every=1000"])
    assert (cfg.train.keep_last, cfg.train.keep_every) == (3, 1000)
    assert load_config(RECIPES / "demo-db.yaml").train.keep_last is None  # default: keep every checkpoint


@pytest.mark.slow
def test_a_run_keeps_the_last_two_and_the_multiples_and_resumes_past_a_leftover(tmp_path):
    run = tmp_path / "run"
    keep = ["train.micro_batch_size=8", "train.save_every=2", "train.keep_last=2", "train.keep_every=4"]
    keep.append("train.schedule=constant")  # so the resume may move max_steps (extend_ok)
    launch("db", run, "train.max_steps=10", *keep)  # saves at 2, 4, 6, 8, 10
    ckpt = run / "checkpoints"
    assert dirs(ckpt) == ["step10", "step4", "step8"] and (ckpt / "latest").read_text() == "step10"
    assert all(verify(ckpt / t) is None for t in dirs(ckpt))
    # what a kill while the save of step 10 deleted step 6 leaves: renamed, half its files gone
    shutil.copytree(ckpt / "step4", ckpt / (DELETING_PREFIX + "step6"))
    for p in sorted((ckpt / (DELETING_PREFIX + "step6")).iterdir())[::2]:
        p.unlink()
    proc = launch("db", run, "train.max_steps=14", "train.extend_ok=true", "resume=auto", *keep)
    assert "resumed from step10 (step 10)" in proc.stderr and "skipping checkpoint" not in proc.stderr
    assert dirs(ckpt) == ["step12", "step14", "step4", "step8"]  # step 10 now past keep_last
