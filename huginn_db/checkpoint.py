"""Checkpoints of a run directory: safe to write, checked on read, exported to safetensors.

    huginn-db export RUN_DIR --out DIR     # DIR/model.safetensors + config.yaml + tokenizer
    huginn-db export RUN_DIR --out DIR --format huginn     # Huginn's names (see huginn_db.interop)

Layout: run/checkpoints/<tag>/ (DeepSpeed's files + manifest.json) and run/checkpoints/latest
(the tag to resume from). A checkpoint is written as checkpoints/.tmp-<tag>/, given a manifest
(size and digest of every file, plus world size and ZeRO stage) once every rank has written,
renamed to <tag>/ and only then named in `latest` (itself replaced atomically). A crash at any
moment therefore leaves either the previous checkpoint or the new complete one; a truncated or
altered file fails the manifest check on load and the next older complete checkpoint is used.
The digest is xxh3-128 over 64 MiB blocks, hashed on a thread pool (~20 GB/s per core, against
~1.8 for sha256): with the size check it catches a truncated file and any change to a file's
bytes, but for a chance of about 2^-128. It guards against damage, not forgery, as sha256 did
here too (whoever can change a file can rewrite the manifest next to it). Manifests of sha256
are still checked as they are.
Old checkpoints are deleted (`prune`, train.keep_last) by renaming them to .deleting-<tag>/ first,
so a kill mid-deletion leaves a name no reader takes for a checkpoint; the next resume finishes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import xxhash
import yaml

from huginn_db.config import RunConfig, from_dict
from huginn_db.errors import CheckpointError
from huginn_db.model import RecurrentDepthLM
from huginn_db.objectives import build_objective

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"
DELETING_PREFIX = ".deleting-"
UNIVERSAL_SUFFIX = "-universal"
DIGEST = "xxh3_128"
BLOCK = 64 << 20  # hashed apart, so one large file's blocks hash on several threads
READ = 8 << 20


def _sha256(path: Path) -> str:
    """The digest of manifests written before xxh3-128 (whole file, one thread)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _block(path: Path, offset: int, size: int) -> bytes:
    """xxh3-128 of `size` bytes of `path` from `offset` (fewer where the file is shorter)."""
    h, buf = xxhash.xxh3_128(), bytearray(min(size, READ))
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        f.seek(offset)
        while size > 0 and (n := f.readinto(view[: min(size, READ)])):
            h.update(view[:n])  # releases the GIL, as the read does
            size -= n
    return h.digest()


def _pool(jobs: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max(1, min(jobs, 8, len(os.sched_getaffinity(0)))))


def digests(paths: list[Path], block: int = BLOCK) -> list[str]:
    """Each file's xxh3-128 digest: the xxh3-128 of its blocks' digests, so the blocks of every
    file hash in parallel."""
    sizes = [p.stat().st_size for p in paths]
    jobs = [(i, off, min(block, n - off)) for i, n in enumerate(sizes) for off in range(0, max(n, 1), block)]
    with _pool(len(jobs)) as pool:
        blocks = list(pool.map(lambda j: _block(paths[j[0]], j[1], j[2]), jobs))
    per_file = [b""] * len(paths)
    for (i, _, _), d in zip(jobs, blocks):
        per_file[i] += d
    return [xxhash.xxh3_128(b).hexdigest() for b in per_file]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a reader sees the old or the new content, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


def write_manifest(tag_dir: Path, meta: dict) -> None:
    paths = [p for p in sorted(tag_dir.rglob("*")) if p.is_file() and p.name != MANIFEST]
    files = {
        str(p.relative_to(tag_dir)): {"bytes": p.stat().st_size, DIGEST: d}
        for p, d in zip(paths, digests(paths, BLOCK))
    }
    write_atomic(tag_dir / MANIFEST, json.dumps({**meta, "block_bytes": BLOCK, "files": files}, indent=1))


def read_manifest(tag_dir: Path) -> dict:
    return json.loads((tag_dir / MANIFEST).read_text())


def verify(tag_dir: Path) -> str | None:
    """What is wrong with a checkpoint directory (one line), or None when it is complete."""
    if not tag_dir.is_dir():
        return "directory missing"
    try:
        manifest = read_manifest(tag_dir)
        files, block = manifest["files"], manifest.get("block_bytes", BLOCK)
        algorithm = "sha256" if any("sha256" in want for want in files.values()) else DIGEST
        if not isinstance(block, int) or block < 1:
            raise ValueError(block)
    except FileNotFoundError:
        return f"no {MANIFEST} (the save did not finish)"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"unreadable {MANIFEST}"
    for name, want in files.items():  # sizes first: a missing or cut file is found without reading
        p = tag_dir / name
        if not p.is_file():
            return f"{name} missing"
        if p.stat().st_size != want["bytes"]:
            return f"{name} truncated ({p.stat().st_size} of {want['bytes']} bytes)"
    paths = [tag_dir / name for name in files]
    if algorithm == DIGEST:
        found = digests(paths, block)
    else:
        with _pool(len(paths)) as pool:
            found = list(pool.map(_sha256, paths))
    for (name, want), got in zip(files.items(), found):
        if got != want.get(algorithm):
            return f"{name} corrupted ({algorithm} mismatch)"
    return None


def tag_step(tag: str) -> int | None:
    m = re.fullmatch(r"step(\d+)", tag)
    return int(m.group(1)) if m else None


def _latest(ckpt: Path) -> str | None:
    """What `latest` names (None: no readable file)."""
    try:
        return (ckpt / "latest").read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def checkpoint_tags(ckpt: Path, named: str | None) -> list[str]:
    """Resume candidates, best first: `named` (the tag in `latest`), then every stepN/ newest first."""
    tags = sorted(
        (p.name for p in ckpt.glob("step*") if p.is_dir() and tag_step(p.name) is not None), key=tag_step, reverse=True
    )
    if named in tags:
        tags.remove(named)
        tags.insert(0, named)
    return tags


def find_checkpoint(ckpt: Path) -> tuple[str | None, list[str]]:
    """(the newest complete checkpoint's tag or None, one line per candidate passed over)."""
    passed = []
    named = _latest(ckpt)
    if named is not None and tag_step(named) is None:
        passed.append(f"latest names {named[:40]!r}, not a checkpoint tag")
    elif named is not None and not (ckpt / named).is_dir():
        passed.append(f"latest names {named}, which does not exist")
    for tag in checkpoint_tags(ckpt, named):
        problem = verify(ckpt / tag)
        if problem is None:
            return tag, passed
        passed.append(f"{ckpt / tag}: {problem}")
    return None, passed


def remove_partial(ckpt: Path) -> None:
    """Drop the temporary directories of saves that never finished and the rest of deletions a
    kill interrupted."""
    for p in [*ckpt.glob(TMP_PREFIX + "*"), *ckpt.glob(DELETING_PREFIX + "*")]:
        shutil.rmtree(p, ignore_errors=True)


def _retire(ckpt: Path, name: str) -> None:
    """Delete checkpoints/<name>: one atomic rename out of every reader's sight, then the files."""
    doomed = ckpt / (DELETING_PREFIX + name)
    (ckpt / name).replace(doomed)
    _fsync_dir(ckpt)
    shutil.rmtree(doomed)


def retained(ckpt: Path, keep_last: int, keep_every: int | None = None) -> list[str]:
    """The published checkpoints (stepN/ with a manifest) that train.keep_last / keep_every keep:
    the one `latest` names, the newest others up to keep_last in all, and those of steps that
    keep_every divides."""
    named = _latest(ckpt)
    tags = [t for t in checkpoint_tags(ckpt, named) if (ckpt / t / MANIFEST).is_file()]
    return [
        t for i, t in enumerate(tags) if i < keep_last or t == named or keep_every and tag_step(t) % keep_every == 0
    ]


def prune(ckpt: Path, keep_last: int, keep_every: int | None = None) -> list[str]:
    """Rank 0, after a save was published: delete the published checkpoints that `retained` does
    not keep, and conversions whose source is gone; returns the deleted tags. Never touches the
    one `latest` names (complete: it was just published), a save in progress (.tmp-*) or a stepN/
    without a manifest (damaged by hand: resume passes over it with a warning, a person decides)."""
    for p in ckpt.glob(DELETING_PREFIX + "*"):  # what an earlier prune left when killed
        shutil.rmtree(p)
    keep = set(retained(ckpt, keep_last, keep_every))
    gone = [t for t in checkpoint_tags(ckpt, None) if t not in keep and (ckpt / t / MANIFEST).is_file()]
    for tag in reversed(gone):  # oldest first
        _retire(ckpt, tag)
    for p in ckpt.glob("step*" + UNIVERSAL_SUFFIX):
        if p.is_dir() and not (ckpt / p.name.removesuffix(UNIVERSAL_SUFFIX)).is_dir():
            _retire(ckpt, p.name)
    return gone


def publish(ckpt: Path, tag: str, meta: dict) -> None:
    """Rank 0, once every rank wrote .tmp-<tag>/: manifest, rename to <tag>/, then `latest`."""
    tmp, final = ckpt / (TMP_PREFIX + tag), ckpt / tag
    write_manifest(tmp, meta)
    if final.exists():  # e.g. a corrupt checkpoint of the same step, passed over at resume
        old = ckpt / (TMP_PREFIX + "old-" + tag)
        final.replace(old)
        shutil.rmtree(old)
    tmp.replace(final)
    _fsync_dir(ckpt)
    write_atomic(ckpt / "latest", tag)


def to_universal(ckpt: Path, tag: str) -> str:
    """DeepSpeed's universal form of checkpoint `tag` (optimizer state per parameter, not per
    rank), which any world size can load; converted once, next to it, as <tag>-universal/ with
    its own manifest, written as .tmp-<tag>-universal/ and renamed (a crash leaves no half copy).
    Returns its tag. Rank 0 only."""
    import contextlib
    import io
    from types import SimpleNamespace

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    out = tag + UNIVERSAL_SUFFIX
    if verify(ckpt / out) is None:
        return out
    shutil.rmtree(ckpt / out, ignore_errors=True)  # damaged: convert again from the source
    tmp = ckpt / (TMP_PREFIX + out)
    shutil.rmtree(tmp, ignore_errors=True)
    args = SimpleNamespace(
        input_folder=str(ckpt / tag),
        output_folder=str(tmp),
        num_extract_workers=1,  # in-process: no worker pool inside a training rank
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # plain data parallelism: no tensor-parallel slicing to record
    )
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            ds_to_universal(args)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not convert {ckpt / tag} to DeepSpeed's universal format: {err}") from None
    stray = ckpt / "latest_universal"  # DeepSpeed's pointer, naming the temporary directory
    if stray.is_file() and stray.read_text().strip() == tmp.name:
        stray.unlink()
    meta = {k: v for k, v in read_manifest(ckpt / tag).items() if k != "files"}
    write_manifest(tmp, {**meta, "universal_of": tag})
    tmp.replace(ckpt / out)
    _fsync_dir(ckpt)
    return out


def latest_tag(run_dir: str | Path) -> str:
    """The newest complete checkpoint (falling back past damaged ones, with a warning)."""
    ckpt = Path(run_dir) / "checkpoints"
    tag, passed = find_checkpoint(ckpt)
    for line in passed:
        log.warning("skipping checkpoint: %s", line)
    if tag is None:
        why = f": {passed[0]}" if passed else ""
        raise CheckpointError(f"no complete checkpoint in {ckpt}{why}")
    return tag


def read_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run or export directory (no config.yaml)")
    return from_dict(RunConfig, yaml.safe_load(path.read_text()))


def consolidated_state_dict(run_dir: str | Path, tag: str | None = None) -> dict[str, torch.Tensor]:
    """Full fp32 module weights from a DeepSpeed checkpoint of any ZeRO stage."""
    ckpt = Path(run_dir) / "checkpoints"
    if tag is None:
        tag = latest_tag(run_dir)
    elif (problem := verify(ckpt / tag)) is not None:
        raise CheckpointError(f"checkpoint {ckpt / tag}: {problem}")
    whole = ckpt / tag / "mp_rank_00_model_states.pt"  # ZeRO 0–2 keep whole weights here
    if whole.is_file():
        return {k: v.float() for k, v in torch.load(whole, map_location="cpu", weights_only=False)["module"].items()}
    # ZeRO-3 writes per-rank shards only: rebuild from the partitioned fp32 optimizer state
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag)


def load_run(run_dir: str | Path, tag: str | None = None):
    """(RunConfig, RecurrentDepthLM in eval mode, objective) from a run or export directory."""
    run = Path(run_dir)
    cfg = read_config(run)
    model = RecurrentDepthLM(cfg.model)
    if (run / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(run / "model.safetensors")
    else:
        state = consolidated_state_dict(run, tag)
    model.load_state_dict(state)
    return cfg, model.eval(), build_objective(cfg.objective.name, cfg.objective_config(), cfg.seed)


def export(run_dir: str | Path, out: str | Path, tag: str | None = None) -> Path:
    """Single-file safetensors + config.yaml + tokenizer, loadable without DeepSpeed."""
    from safetensors.torch import save_file

    run, out = Path(run_dir), Path(out)
    state = consolidated_state_dict(run, tag)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(out / "model.safetensors")
    shutil.copy(run / "config.yaml", out / "config.yaml")
    for name in ("tokenizer.json", "tokenizer.model"):
        if (run / name).is_file():
            shutil.copy(run / name, out / name)
    return out / "model.safetensors"
