"""The package's shape: one-way imports, module sizes, and an objective that is one file."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import RECIPES, ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import import_graph  # noqa: E402


def test_imports_point_down_and_have_no_cycles():
    g = import_graph.graph()
    assert "huginn_db.train" not in {d for deps in g.values() for d in deps}  # nothing imports the trainer
    assert import_graph.problems(g) == []


def test_the_graph_check_catches_an_upward_import(monkeypatch):
    g = import_graph.graph()
    g["huginn_db.checkpoint"] = g["huginn_db.checkpoint"] | {"huginn_db.train"}
    g["huginn_db.model"] = g["huginn_db.model"] | {"huginn_db.tokenizer"}
    g["huginn_db.tokenizer"] = g["huginn_db.tokenizer"] | {"huginn_db.model"}
    found = import_graph.problems(g)
    assert any("checkpoint (layer 4) imports huginn_db.train" in p for p in found)
    assert any(p.startswith("cycle:") for p in found)


TOY = '''
"""A third objective kept outside the repo: BPTT at a fixed depth with gradients through all of it."""
from dataclasses import dataclass

import torch

from huginn_db.objectives.base import Objective, seed_of, unwrap
from huginn_db.objectives.registry import register


@dataclass
class ToyDepthConfig:
    depth: int = 3
    """Core iterations per step, all with gradient."""

    def __post_init__(self):
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")


@register
class ToyDepth(Objective):
    """Full backprop through a fixed number of core iterations."""

    name, short, config = "toy_depth", "Toy", ToyDepthConfig

    @property
    def default_num_steps(self):
        return self.cfg.depth

    def loss(self, model, batch, step, slot=0):
        g = torch.Generator().manual_seed(seed_of(self.seed, slot, 3))
        w = batch["loss_weight"]
        ce = model(batch["input_ids"], num_steps=self.cfg.depth, num_grad_steps=self.cfg.depth, generator=g,
                   labels=batch["target_ids"]) * w
        return ce.sum() / w.sum().clamp(min=1), {}

    def noise(self, model, batch, length, generator=None):
        m = unwrap(model)
        return m.initial_state(torch.empty(batch, length, m.cfg.hidden), generator)

    @torch.no_grad()
    def logits(self, model, input_ids, num_steps=None, generator=None, noise=None, cache=None, **_):
        return unwrap(model).recur(input_ids, num_steps or self.cfg.depth, 0, generator, state=noise, cache=cache)

    @staticmethod
    def core_iterations(cfg, r=None):
        return float(cfg.depth), 0.0

    @staticmethod
    def saved_core_iterations(cfg):
        return cfg.depth
'''


@pytest.mark.slow
def test_a_new_objective_needs_only_its_own_file(tmp_path):
    """Config section, key listing, FLOP report and a real training run for an objective that
    no huginn_db module names."""
    (tmp_path / "toy_objective.py").write_text(textwrap.dedent(TOY))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "HUGINN_DB_OBJECTIVES": "toy_objective",
        "CUDA_VISIBLE_DEVICES": "",
    }

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
        )

    keys = run("huginn_db.cli", "keys", "objective.toy_depth")
    assert keys.returncode == 0 and "objective.toy_depth.depth (int) = 3" in keys.stdout, keys.stderr
    bad = run(
        "huginn_db.cli",
        "train",
        str(RECIPES / "demo-db.yaml"),
        "objective.name=toy_depth",
        "objective.toy_depth.depth=0",
    )
    assert bad.returncode == 2 and "objective.toy_depth.depth must be >= 1, got 0" in bad.stderr
    flops = run("huginn_db.cli", "flops", str(RECIPES / "demo-db.yaml"), "objective.name=toy_depth", "--json")
    rep = json.loads(flops.stdout)
    assert rep["baseline"] == "toy_depth" and {"bptt", "diffusion_blocks", "toy_depth"} <= set(rep["train"])
    run_dir = tmp_path / "run"
    tr = run(
        "huginn_db.train",
        str(RECIPES / "demo-db.yaml"),
        f"run_dir={run_dir}",
        "objective.name=toy_depth",
        "train.max_steps=3",
        "train.log_every=1",
        "train.micro_batch_size=4",
        "eval.num_steps=[1,3]",
        "eval.batch_size=50",
        "data.reasoning.test_examples=5",
        "train.threads=1",
    )
    assert tr.returncode == 0, tr.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    per_step = rep["train"]["toy_depth"]["per_step"]["total"] / rep["shape"]["tokens_per_step"]
    assert rows[0]["flops"] == pytest.approx(per_step * rows[0]["tokens"], rel=0.5)  # reasoning rows are shorter
    final = json.loads((run_dir / "eval" / "final.json").read_text())
    assert final["objective"] == "toy_depth" and set(final["accuracy"]) == {"1", "3"}
