"""Load a trained model back from a run directory (DeepSpeed checkpoint + config.yaml)."""
from __future__ import annotations

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


def load_run(run_dir: str | Path, tag: str | None = None):
    """(RunConfig, RecurrentDepthLM in eval mode, objective) from a run directory.

    Reads the module weights DeepSpeed saved for ZeRO stages 0–2 (mp_rank_00_model_states.pt).
    """
    from huginn_db.train import build_objective

    run = Path(run_dir)
    cfg = from_dict(RunConfig, yaml.safe_load((run / "config.yaml").read_text()))
    tag = tag or latest_tag(run)
    states = torch.load(run / "checkpoints" / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    model = RecurrentDepthLM(cfg.model)
    model.load_state_dict(states["module"])
    return cfg, model.eval(), build_objective(cfg)
