"""Recipes: YAML files mapped onto dataclasses, with dotted CLI overrides (litgpt-style).

    huginn-db train recipes/demo-db.yaml train.max_steps=50 objective.diffusion_blocks.p_mean=1.0

Unknown keys and wrong types fail before any work starts, naming the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from huginn_db.data.reasoning import ReasoningConfig, build_family
from huginn_db.data.text import TextConfig
from huginn_db.model import ModelConfig
from huginn_db.objectives import BPTTConfig, DiffusionBlocksConfig


class ConfigError(ValueError):
    """A recipe or override problem; the CLI prints it as one line and exits 2."""


@dataclass
class ObjectiveConfig:
    name: str = "diffusion_blocks"  # diffusion_blocks | bptt
    bptt: BPTTConfig = field(default_factory=BPTTConfig)
    diffusion_blocks: DiffusionBlocksConfig = field(default_factory=DiffusionBlocksConfig)


@dataclass
class DataConfig:
    name: str = "reasoning"  # reasoning (embedded, generated) | text (files or hub via datasets)
    reasoning: ReasoningConfig = field(default_factory=ReasoningConfig)
    text: TextConfig = field(default_factory=TextConfig)


@dataclass
class TrainConfig:
    max_steps: int = 300
    micro_batch_size: int = 64  # per data-parallel rank
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr·min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # auto: bf16 autocast (fp32 master weights) where the hardware has bf16 matmul (CUDA, or a
    # CPU with AVX512-BF16/AMX), else fp32 — on an AVX2-only CPU bf16 matmul is ~10× slower
    precision: str = "auto"  # auto | bf16 | fp32
    log_every: int = 10
    save_every: int = 0  # checkpoint every N steps (0: only at the end)
    threads: typing.Optional[int] = None  # torch intra-op threads on CPU (None: torch default)
    peak_flops: typing.Optional[float] = None  # per-rank FLOP/s for MFU in metrics (see `huginn-db peak`)
    # a step whose loss or gradients are non-finite is skipped (no update) up to this many times
    # in a run; the next one stops the run (exit 3). 0: stop at the first.
    skip_nonfinite: int = 0
    # seconds a collective may wait for the other ranks before the run stops (exit 5) instead
    # of hanging; covers rank 0 evaluating alone at the end, so keep it above that
    dist_timeout: float = 1800.0


@dataclass
class EvalConfig:
    num_steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])  # test-time iterations
    batch_size: int = 500
    max_val_batches: int = 8  # text runs: validation loss over at most this many batches
    every: int = 0  # in-training evaluation every N steps (0: off), logged to metrics.jsonl
    every_examples: int = 50  # reasoning examples per difficulty for in-training evaluation


@dataclass
class RunConfig:
    run_dir: str = "runs/default"
    seed: int = 0
    deepspeed: str = "deepspeed/zero0.json"  # relative to the recipe's directory or the CWD
    overwrite: bool = False  # replace an existing run in run_dir (metrics and checkpoints)
    resume: str = "never"  # never | auto (continue from run_dir/checkpoints/latest if present)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def objective_config(self):
        return getattr(self.objective, self.objective.name)


# --- dict → dataclass with checks ------------------------------------------------------------

def _check(value, tp, path: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _check(value, next(a for a in args if a is not type(None)), path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return from_dict(tp, value, path)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls, data: dict, path: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{(path + '.' if path else '') + close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{full}'{hint}")
        kwargs[key] = _check(value, hints[key], full)
    return cls(**kwargs)


def apply_override(data: dict, item: str) -> None:
    """`a.b.c=value` sets data['a']['b']['c'] = yaml-parsed value."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like dotted.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: '{p}' is not a section")
    node[parts[-1]] = value


def load_config(recipe: str | Path, overrides: list[str] = ()) -> RunConfig:
    path = Path(recipe)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping at the top level")
    for item in overrides:
        apply_override(data, item)
    cfg = from_dict(RunConfig, data)
    ds = Path(cfg.deepspeed)
    if not ds.is_absolute():
        ds = path.parent / ds if (path.parent / ds).is_file() else ds
    if not ds.is_file():
        raise ConfigError(f"deepspeed: config file not found: {cfg.deepspeed}")
    cfg.deepspeed = str(ds.resolve())
    jl = cfg.data.reasoning.jsonl
    for key in ("train", "test"):  # a user's task files, as the DeepSpeed JSON: recipe dir, then CWD
        name = getattr(jl, key)
        if name and not Path(name).is_absolute():
            local = path.parent / name
            setattr(jl, key, str((local if local.is_file() else Path(name)).resolve()))
    validate(cfg)
    check_deepspeed_json(cfg)
    return cfg


# DeepSpeed keys the recipe owns: (JSON key, recipe key, recipe value)
def _ds_owned(cfg: RunConfig) -> list[tuple[str, str, object]]:
    t = cfg.train
    return [("train_micro_batch_size_per_gpu", "train.micro_batch_size", t.micro_batch_size),
            ("gradient_accumulation_steps", "train.grad_accum", t.grad_accum),
            ("gradient_clipping", "train.grad_clip", t.grad_clip)]


def check_deepspeed_json(cfg: RunConfig, world_size: int | None = None) -> dict:
    """The DeepSpeed JSON, refused where it contradicts the recipe (which owns batch sizes,
    clipping, optimizer, schedule and precision). world_size: also check train_batch_size."""
    path = Path(cfg.deepspeed)
    try:
        ds = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"deepspeed: cannot read {path}: {err}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"deepspeed: {path} is not valid JSON ({err}); fix the file") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"deepspeed: {path} must hold a JSON object")
    for key, ours, value in _ds_owned(cfg):
        if key in ds and ds[key] != value:
            raise ConfigError(f"deepspeed: {key}={ds[key]} in {path.name} contradicts {ours}={value}; "
                              f"drop it from the JSON (the recipe sets it) or set {ours}={ds[key]}")
    if world_size is not None and "train_batch_size" in ds:
        want = cfg.train.micro_batch_size * cfg.train.grad_accum * world_size
        if ds["train_batch_size"] != want:
            raise ConfigError(f"deepspeed: train_batch_size={ds['train_batch_size']} in {path.name} contradicts "
                              f"train.micro_batch_size × train.grad_accum × {world_size} ranks = {want}; drop it from the JSON")
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ConfigError(f"deepspeed: {path.name} has an '{key}' section, but the trainer builds AdamW and the "
                              f"cosine schedule from train.*; remove '{key}' from the JSON")
    if (ds.get("fp16") or {}).get("enabled"):
        raise ConfigError(f"deepspeed: {path.name} enables fp16, which this trainer does not support; "
                          f"remove it and use train.precision=bf16")
    if (ds.get("bf16") or {}).get("enabled") and cfg.train.precision == "fp32":
        raise ConfigError(f"deepspeed: {path.name} enables bf16 but train.precision=fp32; "
                          f"set train.precision=bf16 or disable bf16 in the JSON")
    if cfg.model.compile_core and (ds.get("zero_optimization") or {}).get("stage", 0) == 3:
        raise ConfigError("model.compile_core=true is not supported with ZeRO-3 (its parameter hooks break the "
                          "compiled graph); use ZeRO 0-2 or model.compile_core=false")
    return ds


def validate(cfg: RunConfig) -> None:
    m, o, t = cfg.model, cfg.objective, cfg.train
    if o.name not in ("bptt", "diffusion_blocks"):
        raise ConfigError(f"objective.name must be bptt|diffusion_blocks, got {o.name!r}")
    if m.hidden % m.heads or (m.hidden // m.heads) % 2:
        raise ConfigError(f"model.hidden={m.hidden} must split into model.heads={m.heads} heads of even size")
    if min(m.prelude_layers, m.coda_layers) < 0 or m.core_layers < 1:
        raise ConfigError("model: core_layers must be >= 1 and prelude/coda layers >= 0")
    if o.bptt.mean_recurrence < 1 or o.bptt.backprop_depth < 1:
        raise ConfigError("objective.bptt: mean_recurrence and backprop_depth must be >= 1")
    if o.bptt.backprop_depth > o.bptt.mean_recurrence:
        raise ConfigError(f"objective.bptt.backprop_depth={o.bptt.backprop_depth} exceeds mean_recurrence="
                          f"{o.bptt.mean_recurrence}; lower backprop_depth (Huginn: 8 of 32)")
    if m.loss_chunk < 0:
        raise ConfigError(f"model.loss_chunk must be >= 0 (0: full logits), got {m.loss_chunk}")
    if m.vocab_size < 2 or m.context < 2:
        raise ConfigError("model: vocab_size and context must be >= 2")
    db = o.diffusion_blocks
    if not 0 < db.sigma_min < db.sigma_max:
        raise ConfigError(f"objective.diffusion_blocks: need 0 < sigma_min < sigma_max, got {db.sigma_min}, {db.sigma_max}")
    if db.num_bands < 1 or db.p_std <= 0:
        raise ConfigError("objective.diffusion_blocks: num_bands must be >= 1 and p_std > 0")
    if cfg.train.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"train.precision must be auto|bf16|fp32, got {cfg.train.precision!r}")
    if min(t.micro_batch_size, t.grad_accum, t.max_steps + 1, t.log_every) < 1:
        raise ConfigError("train: micro_batch_size, grad_accum and log_every must be >= 1, max_steps >= 0")
    if not t.lr > 0 or not 0 <= t.min_lr_ratio <= 1 or t.warmup_steps < 0:
        raise ConfigError(f"train: need lr > 0 (got {t.lr}), 0 <= min_lr_ratio <= 1 (got {t.min_lr_ratio}) "
                          f"and warmup_steps >= 0 (got {t.warmup_steps})")
    if t.skip_nonfinite < 0 or t.save_every < 0 or not t.dist_timeout > 0:
        raise ConfigError("train: skip_nonfinite and save_every must be >= 0 and dist_timeout > 0")
    if cfg.eval.num_steps and min(cfg.eval.num_steps) < 1:  # [] skips the final evaluation
        raise ConfigError(f"eval.num_steps must list test-time iterations >= 1, got {cfg.eval.num_steps}")
    if cfg.resume not in ("never", "auto"):
        raise ConfigError(f"resume must be never|auto, got {cfg.resume!r}")
    if cfg.resume == "auto" and cfg.overwrite:
        raise ConfigError("resume=auto and overwrite=true contradict each other (continue the run, or replace it); pass one")
    if cfg.data.name not in ("reasoning", "text"):
        raise ConfigError(f"data.name must be reasoning|text, got {cfg.data.name!r}")
    if cfg.data.name == "reasoning":
        try:
            build_family(cfg.data.reasoning)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if cfg.data.name == "text" and cfg.data.text.seq_len > cfg.model.context:
        raise ConfigError(f"data.text.seq_len={cfg.data.text.seq_len} exceeds model.context={cfg.model.context}")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
