"""What the checkpoint manifest costs: its digests at save and their check at resume, against
DeepSpeed's own write and load of the same checkpoint, for the manifest code before this change
(sha256 of every file, one after another, rank 0) and now (huginn_db.checkpoint).

    python eval/bench_checkpoint.py                                  # paper-lm1b shape (~50M params)
    python eval/bench_checkpoint.py --recipe recipes/huginn-3.5b-db.yaml --hidden 1024 --repeats 5

One run, one process (a world of one on the CPU): build the recipe's model and engine (its
DeepSpeed JSON), take one optimizer step so the optimizer state exists, then per repeat save a
checkpoint, digest it both ways (in alternating order), check it both ways, and load it. The
files are in the page cache throughout (just written), so hashing is measured, not the disk; a
cold resume reads the files once either way (the check first, the load then finds them cached).
Prints medians and the ratios (write + digests) / write and (load + check) / load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from huginn_db import checkpoint as ck  # noqa: E402
from huginn_db.components.distributed import init_distributed  # noqa: E402
from huginn_db.components.engine import build_engine, deepspeed_config  # noqa: E402
from huginn_db.components.optim import build_optimizer  # noqa: E402
from huginn_db.config import load_config, resolve  # noqa: E402
from huginn_db.model import RecurrentDepthLM  # noqa: E402


# --- the manifest code before this change, as it was (write_manifest / verify, sha256) --------
def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def before_manifest(tag_dir: Path) -> dict:
    return {
        str(p.relative_to(tag_dir)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(tag_dir.rglob("*"))
        if p.is_file() and p.name != ck.MANIFEST
    }


def before_verify(tag_dir: Path, files: dict) -> str | None:
    for name, want in files.items():
        p = tag_dir / name
        if not p.is_file():
            return f"{name} missing"
        if p.stat().st_size != want["bytes"]:
            return f"{name} truncated"
        if _sha256(p) != want["sha256"]:
            return f"{name} corrupted (sha256 mismatch)"
    return None


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "paper-lm1b-db.yaml"))
    ap.add_argument("--hidden", type=int, help="override model.hidden (mlp_hidden = 4x) to scale the shape")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default="runs/bench-checkpoint")
    args = ap.parse_args()
    overrides = ["train.micro_batch_size=1", f"run_dir={args.work}"]
    if args.hidden:
        overrides += [f"model.hidden={args.hidden}", f"model.mlp_hidden={4 * args.hidden}"]
    cfg = load_config(args.recipe, overrides)
    cfg = resolve(cfg, cfg.model.vocab_size)
    init_distributed()
    model = RecurrentDepthLM(cfg.model)
    engine = build_engine(model, *build_optimizer(model, cfg.train), deepspeed_config(cfg, 1))
    ids = torch.randint(0, cfg.model.vocab_size, (1, 32))
    engine.backward(engine(ids, num_steps=2, labels=ids).mean())  # one step: the optimizer state exists
    engine.step()

    ckpt = Path(args.work) / "checkpoints"
    shutil.rmtree(ckpt, ignore_errors=True)
    rows = {k: [] for k in ("write", "load", "digest_before", "digest_now", "check_before", "check_now")}
    for r in range(args.repeats):
        tag = f"{ck.TMP_PREFIX}bench{r}"
        rows["write"].append(timed(engine.save_checkpoint, str(ckpt), tag, {}, False)[0])
        d = ckpt / tag
        order = ["before", "now"] if r % 2 == 0 else ["now", "before"]
        for which in order:
            if which == "before":
                seconds, files = timed(before_manifest, d)
            else:
                seconds, _ = timed(ck.write_manifest, d, {"step": r})
            rows[f"digest_{which}"].append(seconds)
        for which in order:
            seconds, problem = timed(before_verify, d, files) if which == "before" else timed(ck.verify, d)
            assert problem is None, problem
            rows[f"check_{which}"].append(seconds)
        rows["load"].append(timed(engine.load_checkpoint, str(ckpt), tag)[0])
        size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file() and p.name != ck.MANIFEST)
        shutil.rmtree(d)
    med = {k: statistics.median(v) for k, v in rows.items()}
    params = sum(p.numel() for p in model.parameters())
    out = {
        "recipe": Path(args.recipe).name,
        "params": params,
        "checkpoint_bytes": size,
        "files": len(files),
        "cpus": len(os.sched_getaffinity(0)),
        **{f"{k}_s": round(v, 4) for k, v in med.items()},
        "save_ratio_before": round((med["write"] + med["digest_before"]) / med["write"], 3),
        "save_ratio_now": round((med["write"] + med["digest_now"]) / med["write"], 3),
        "resume_ratio_before": round((med["load"] + med["check_before"]) / med["load"], 3),
        "resume_ratio_now": round((med["load"] + med["check_now"]) / med["load"], 3),
    }
    print(json.dumps(out, indent=1))
    gb = size / 1e9
    print(
        f"{out['recipe']} ({params / 1e6:.0f}M params, checkpoint {gb:.2f} GB in {len(files)} files, "
        f"{args.repeats} repeats, medians):\n"
        f"  save:   write {med['write']:.2f}s + digests {med['digest_before']:.2f}s before "
        f"({gb / med['digest_before']:.2f} GB/s) / {med['digest_now']:.2f}s now ({gb / med['digest_now']:.2f} GB/s)"
        f" -> x{out['save_ratio_before']} before, x{out['save_ratio_now']} now\n"
        f"  resume: load {med['load']:.2f}s + check {med['check_before']:.2f}s before / {med['check_now']:.2f}s now"
        f" -> x{out['resume_ratio_before']} before, x{out['resume_ratio_now']} now"
    )
    shutil.rmtree(ckpt, ignore_errors=True)
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
