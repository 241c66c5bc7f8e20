"""Trained weights out of a run directory: DeepSpeed checkpoints → plain module → safetensors.

    huginn-db export RUN_DIR --out DIR     # DIR/model.safetensors + config.yaml + tokenizer
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
import yaml

from huginn_db.config import RunConfig, from_dict
from huginn_db.model import RecurrentDepthLM


def latest_tag(run_dir: str | Path) -> str:
    ckpt = Path(run_dir) / "checkpoints"
    latest = ckpt / "latest"
    if not latest.is_file():
        raise FileNotFoundError(f"no checkpoint in {ckpt} (missing 'latest')")
    return latest.read_text().strip()


def read_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run or export directory (no config.yaml)")
    return from_dict(RunConfig, yaml.safe_load(path.read_text()))


def consolidated_state_dict(run_dir: str | Path, tag: str | None = None) -> dict[str, torch.Tensor]:
    """Full fp32 module weights from a DeepSpeed checkpoint of any ZeRO stage."""
    ckpt = Path(run_dir) / "checkpoints"
    tag = tag or latest_tag(run_dir)
    whole = ckpt / tag / "mp_rank_00_model_states.pt"  # ZeRO 0–2 keep whole weights here
    if whole.is_file():
        return {k: v.float() for k, v in torch.load(whole, map_location="cpu", weights_only=False)["module"].items()}
    # ZeRO-3 writes per-rank shards only: rebuild from the partitioned fp32 optimizer state
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag)


def load_run(run_dir: str | Path, tag: str | None = None):
    """(RunConfig, RecurrentDepthLM in eval mode, objective) from a run or export directory."""
    from huginn_db.train import build_objective

    run = Path(run_dir)
    cfg = read_config(run)
    model = RecurrentDepthLM(cfg.model)
    if (run / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(run / "model.safetensors")
    else:
        state = consolidated_state_dict(run, tag)
    model.load_state_dict(state)
    return cfg, model.eval(), build_objective(cfg)


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="huginn-db export", description="Consolidate a run's checkpoint to safetensors.")
    ap.add_argument("run_dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tag", default=None, help="checkpoint tag (default: latest)")
    args = ap.parse_args(argv)
    try:
        path = export(args.run_dir, args.out, args.tag)
    except (FileNotFoundError, KeyError, RuntimeError) as err:
        print(f"huginn-db: error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
