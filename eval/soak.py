"""Fault soak: each objective trained to the end through many SIGKILLs, then compared with the
same run never interrupted.

    python eval/soak.py                                   # every objective, 30 kills each
    python eval/soak.py --objectives bptt --kills 10 --json runs/soak.json
    python eval/soak.py --nproc 2 --zero 3 --kills 6      # 2 ranks under ZeRO-3 (a kill takes both)
    python eval/soak.py --objectives fixed_depth --kills 4 --steps 6 --points prune    # one kill point

A run (tiny model, a checkpoint every step, train.keep_last=2, keep_every=4) is started, killed,
resumed with resume=auto, killed again, ... until it reaches train.max_steps. Each start draws
where its kill lands:
  step      SIGKILL from outside at a random moment after a random step's metrics row: in the
            next step's training, the save of that step, or the final evaluation
  write     inside DeepSpeed's save: the process kills itself after its k-th torch.save of a
            checkpoint file (some rank files written, others not)
  manifest  every rank has written, before the manifest exists
  rename    the manifest is written, before .tmp-stepN/ is renamed to stepN/
  latest    stepN/ is in place, before `latest` names it
  prune     `latest` names the new checkpoint and an old one is being deleted: renamed to
            .deleting-stepM/, one of its files removed (or a leftover's, at resume)
(the in-process points patch huginn_db.checkpoint / torch.save in the trainer's interpreter,
as the fault tests do). After every kill each stepN/ directory must pass its manifest check and
resume=auto must find a checkpoint once one was published; after the run, every checkpoint
retention keeps must still be there. At the end the final weights must be
torch.equal to the uninterrupted run's and metrics.jsonl must hold the same losses, step by step.
Prints one row per objective: kills, kill points hit, checkpoints found unusable, losses.
The /dev/shm files that appear during a start are removed after it (killed ranks leave theirs):
run the soak alone on its machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from huginn_db.checkpoint import consolidated_state_dict, find_checkpoint, tag_step, verify  # noqa: E402

OBJECTIVES = ["bptt", "diffusion_blocks", "deep_supervision", "fixed_depth"]
POINTS = ["step", "write", "manifest", "rename", "latest", "prune"]
KEEP_LAST, KEEP_EVERY = 2, 4
TINY = [
    "model.hidden=64",
    "model.mlp_hidden=128",
    "data.reasoning.test_examples=10",
    "data.reasoning.test_difficulties=[1,2]",
    "eval.num_steps=[1]",
    "objective.bptt.mean_recurrence=4",
    "objective.deep_supervision.segments=3",
    "train.micro_batch_size=8",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.precision=fp32",
    "train.threads=1",
    "train.save_every=1",
    f"train.keep_last={KEEP_LAST}",
    f"train.keep_every={KEEP_EVERY}",
]

# Runs in the trainer's interpreter before huginn_db.train.main: kill this process at POINT.
PRELUDE = """
import os, signal, torch
import huginn_db.checkpoint as ck
POINT, K = {point!r}, {k}
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if POINT == "write":
    seen, save = [0], torch.save
    def torch_save(obj, f, *a, **kw):
        if ck.TMP_PREFIX in str(f):
            seen[0] += 1
            if seen[0] == K:
                die()
        return save(obj, f, *a, **kw)
    torch.save = torch_save
elif POINT == "prune":
    import shutil
    seen, rmtree = [0], shutil.rmtree
    def tree(path, *a, **kw):
        if ck.DELETING_PREFIX in str(path):
            seen[0] += 1
            if seen[0] == K:
                files = sorted(e.path for e in os.scandir(path) if e.is_file())
                if files:
                    os.unlink(files[0])
                die()
        return rmtree(path, *a, **kw)
    shutil.rmtree = tree
else:
    calls, write_manifest, write_atomic = [0], ck.write_manifest, ck.write_atomic
    def manifest(tag_dir, meta):
        calls[0] += 1
        if POINT == "manifest" and calls[0] == K:
            die()
        write_manifest(tag_dir, meta)
        if POINT == "rename" and calls[0] == K:
            die()
    def atomic(path, text):
        if POINT == "latest" and path.name == "latest" and calls[0] == K:
            die()
        write_atomic(path, text)
    ck.write_manifest, ck.write_atomic = manifest, atomic
import sys
from huginn_db.train import main
sys.exit(main(sys.argv[1:]))
"""


def command(args, run: Path, objective: str, extra: list[str], prelude: str | None) -> list[str]:
    recipe = ROOT / "recipes" / "demo-db.yaml"
    overrides = [
        f"run_dir={run}",
        f"objective.name={objective}",
        f"train.max_steps={args.steps}",
        f"deepspeed=deepspeed/zero{args.zero}{'-cpu' if args.zero == 3 else ''}.json",  # CPU ranks
        *TINY,
        *extra,
    ]
    if args.nproc > 1:  # kills land from outside only: a rank killing itself leaves its peer waiting
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_accelerators", str(args.nproc),
                "--master_port", str(29500 + random.randrange(1000)), "--module", "huginn_db.train",
                str(recipe), *overrides]  # fmt: skip
    if prelude is None:
        return [sys.executable, "-m", "huginn_db.train", str(recipe), *overrides]
    return [sys.executable, "-c", prelude, str(recipe), *overrides]


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


SHM = Path("/dev/shm")


def shm_entries() -> set[Path]:
    return set(SHM.iterdir()) if SHM.is_dir() else set()


def drop_shm(before: set[Path]) -> None:
    """Remove the shared-memory files a killed start left (DeepSpeed's CPU collectives map them
    per process; SIGKILLed ranks never unlink theirs, and hundreds of starts fill /dev/shm)."""
    for p in shm_entries() - before:
        p.unlink(missing_ok=True)


def run_to_end(cmd, timeout=600) -> None:
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"soak: {' '.join(cmd[:4])} … failed ({proc.returncode}): {proc.stderr[-1500:]}")


def audit(run: Path, published: bool) -> list[str]:
    """What is unusable in run/checkpoints after a kill (empty: every stepN/ verifies)."""
    ckpt = run / "checkpoints"
    bad = [f"{p.name}: {why}" for p in ckpt.glob("step*") if tag_step(p.name) is not None and (why := verify(p))]
    if published and find_checkpoint(ckpt)[0] is None:
        bad.append("no resumable checkpoint although one was published")
    return bad


def resumed_at(run: Path) -> int:
    """The step a start with resume=auto continues from (0: from scratch)."""
    ckpt = run / "checkpoints"
    tag = find_checkpoint(ckpt)[0] if ckpt.is_dir() else None
    return tag_step(tag) if tag else 0


def kill_during(proc: subprocess.Popen, run: Path, step: int, delay: float) -> None:
    """SIGKILL the start's process group `delay` s after metrics.jsonl first shows `step` (a delay
    past one step's time lands in the next step or its save; the end run may finish first)."""
    metrics, started = run / "metrics.jsonl", time.time()
    while proc.poll() is None:
        try:  # rows of this start only: resume rewrites the file without the rows past its checkpoint
            rows = metrics.read_text().splitlines() if metrics.stat().st_mtime >= started else []
        except OSError:
            rows = []
        if any(json.loads(r).get("step", 0) >= step for r in rows[-3:] if r.endswith("}")):
            time.sleep(delay)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            return
        time.sleep(0.005)


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def soak(args, objective: str, rng: random.Random, out: Path) -> dict:
    ref, run = out / f"{objective}-reference", out / f"{objective}-soaked"
    for d in (ref, run):
        shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    run_to_end(command(args, ref, objective, [], None))
    step_seconds = max(json.loads((ref / "eval" / "final.json").read_text())["train_seconds"] / args.steps, 0.01)
    a, la = consolidated_state_dict(ref), losses(ref)
    points, unusable, kills, runs, equal, same_losses = Counter(), [], 0, 0, True, True
    while kills < args.kills:  # one run: killed and resumed until it reaches max_steps
        shutil.rmtree(run, ignore_errors=True)
        runs, starts = runs + 1, 0
        while True:
            point = "step" if args.nproc > 1 else rng.choice(args.points)
            k = rng.randint(1, 6 if point == "write" else 3)
            prelude = None if point == "step" else PRELUDE.format(point=point, k=k)
            cmd = command(args, run, objective, ["resume=auto"] if starts else [], prelude)
            shm_before = shm_entries()
            proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)  # fmt: skip
            starts += 1
            # a random moment of a random step of this start: training, a save, the final eval; a start
            # from the last checkpoint only evaluates, longer than a step: killing it too would never end
            if point == "step" and (done := resumed_at(run)) < args.steps:
                kill_during(proc, run, rng.randint(done + 1, args.steps), rng.uniform(0.0, step_seconds))
            _, err = proc.communicate(timeout=600)
            drop_shm(shm_before)
            if proc.returncode == 0:  # this start reached the end before its kill point
                break
            if proc.returncode != -signal.SIGKILL and not (args.nproc > 1 and proc.returncode < 0):
                raise SystemExit(f"soak: {objective} run {runs} start {starts} exited {proc.returncode}: {err[-1500:]}")
            kills += 1
            points[point] += 1
            ckpt = run / "checkpoints"
            published = ckpt.is_dir() and any(tag_step(p.name) is not None for p in ckpt.glob("step*"))
            unusable += [f"kill {kills} ({point}): {line}" for line in audit(run, published)]
        ckpt = run / "checkpoints"
        for step in range(1, args.steps + 1):  # what keep_last / keep_every keep, by the run's end
            if (step > args.steps - KEEP_LAST or step % KEEP_EVERY == 0) and verify(ckpt / f"step{step}"):
                unusable.append(f"run {runs}: step{step} kept by retention, but {verify(ckpt / f'step{step}')}")
        b = consolidated_state_dict(run)
        equal &= a.keys() == b.keys() and all(a[key].equal(b[key]) for key in a)
        same_losses &= losses(run) == la
    return {
        "objective": objective,
        "runs": runs,
        "kills": kills,
        "points": dict(points),
        "unusable": unusable,
        "weights_equal": equal,
        "losses_equal": same_losses,
        "steps": args.steps,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objectives", nargs="+", default=OBJECTIVES)
    ap.add_argument("--kills", type=int, default=30, help="SIGKILLs per objective")
    ap.add_argument("--steps", type=int, default=16, help="train.max_steps of every run")
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--zero", type=int, default=0, choices=[0, 1, 2, 3])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--points", nargs="+", default=POINTS, choices=POINTS, help="kill points to draw from")
    ap.add_argument("--out", default="runs/soak")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    rng, out = random.Random(args.seed), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    print(
        "| objective | ranks | ZeRO | runs | kills | kill points | unusable checkpoints | final weights | losses | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for objective in args.objectives:
        r = soak(args, objective, rng, out)
        rows.append({**r, "nproc": args.nproc, "zero": args.zero})
        hit = ", ".join(f"{k} {r['points'][k]}" for k in POINTS if k in r["points"])
        print(f"| {objective} | {args.nproc} | {args.zero} | {r['runs']} | {r['kills']} | {hit} | {len(r['unusable'])} | "
              f"{'equal' if r['weights_equal'] else 'DIFFER'} | {'equal' if r['losses_equal'] else 'DIFFER'} | {r['seconds']:.0f} |",
              flush=True)  # fmt: skip
        for line in r["unusable"]:
            print("  unusable:", line)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["weights_equal"] and r["losses_equal"] and not r["unusable"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
