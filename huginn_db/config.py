"""Recipes: YAML files mapped onto dataclasses, with dotted CLI overrides (litgpt-style).

    huginn-db train recipes/demo-db.yaml train.max_steps=50 objective.diffusion_blocks.p_mean=1.0

Unknown keys and wrong types fail before any work starts, naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from huginn_db.configdoc import keys
from huginn_db.configparse import from_dict
from huginn_db.data.reasoning import ReasoningConfig, build_family
from huginn_db.data.text import TextConfig
from huginn_db.errors import ConfigError
from huginn_db.model import ModelConfig
from huginn_db.objectives import OBJECTIVES


def _objective_config() -> type:
    """`objective:` — the objective to train plus one section per registered objective, so a
    recipe can carry every objective's settings and a new objective needs no edit here."""

    def post_init(self):
        if self.name not in OBJECTIVES:
            raise ValueError(f"name must be {'|'.join(OBJECTIVES)}, got {self.name!r}")

    fields = [("name", str, field(default="diffusion_blocks"))]
    fields += [(name, obj.config, field(default_factory=obj.config)) for name, obj in OBJECTIVES.items()]
    cls = dataclasses.make_dataclass("ObjectiveConfig", fields, namespace={"__post_init__": post_init})
    cls.__module__ = __name__
    cls.__doc__ = "Which objective trains the model (name), and each objective's settings."
    # read by `keys` in place of attribute docstrings, which a generated class cannot carry
    cls.__field_docs__ = {
        "name": "The objective to train: " + ", ".join(OBJECTIVES) + ".",
        **{n: (o.__doc__ or "").strip().splitlines()[0] for n, o in OBJECTIVES.items()},
    }
    return cls


ObjectiveConfig = _objective_config()


@dataclass
class DataConfig:
    name: typing.Literal["reasoning", "text"] = "reasoning"
    """reasoning: the embedded, generated depth benchmark; text: files or hub data via datasets."""
    reasoning: ReasoningConfig = field(default_factory=ReasoningConfig)
    """The depth benchmark's family, difficulties and test set (data.name=reasoning)."""
    text: TextConfig = field(default_factory=TextConfig)
    """Text files, tokenizer and window (data.name=text)."""
    workers: typing.Optional[int] = None
    """Loader processes building micro-batches ahead of the step (None: 2 where CUDA trains, else
    0: on a CPU the cores are the step's). Batches stay functions of (step, micro-batch, rank)."""

    def __post_init__(self):
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0 or null, got {self.workers}")


@dataclass
class TrainConfig:
    max_steps: int = 300
    """Optimizer steps."""
    micro_batch_size: int = 64
    """Sequences per micro-batch per data-parallel rank."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """The decays (cosine, wsd) end at lr·min_lr_ratio; trapezoid's cool-down stops there."""
    warmup_steps: int = 20
    """Linear warm-up steps (every schedule)."""
    schedule: typing.Literal["cosine", "wsd", "trapezoid", "constant"] = "cosine"
    """The lr after the warm-up. cosine: to lr·min_lr_ratio at max_steps. wsd (warmup-stable-decay,
    Hu et al. 2024; Hägele et al. 2024): lr, then the last decay_fraction of max_steps decays by
    decay_shape. trapezoid (Huginn's): lr, then a linear cool-down over that last share towards 0,
    floored at lr·min_lr_ratio. constant: lr."""
    decay_fraction: float = 0.2
    """wsd / trapezoid: the share of max_steps the final decay takes (rounded up to whole steps)."""
    decay_shape: typing.Literal["linear", "cosine", "1-sqrt"] = "1-sqrt"
    """wsd's decay from lr to lr·min_lr_ratio; 1-sqrt was Hägele et al.'s best."""
    extend_ok: bool = False
    """Let a resume change max_steps or decay_fraction where no lr already applied changes (a wsd,
    trapezoid or constant run whose decay has not begun); otherwise a resume that changes the
    schedule or one of its keys is refused."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not embeddings, norms or biases)."""
    beta1: float = 0.9
    """AdamW β1."""
    beta2: float = 0.95
    """AdamW β2."""
    grad_clip: float = 1.0
    """Gradient-norm clipping (DeepSpeed's gradient_clipping)."""
    precision: typing.Literal["auto", "bf16", "fp32"] = "auto"
    """auto: bf16 autocast (fp32 master weights) where the hardware has fast bf16 matmul (CUDA, a
    CPU with AVX512-BF16/AMX), else fp32 — on an AVX2-only CPU bf16 matmul is ~10× slower."""
    log_every: int = 10
    """Write a metrics.jsonl record every N steps."""
    save_every: int = 0
    """Checkpoint every N steps (0: only at the end)."""
    keep_last: typing.Optional[int] = None
    """Keep the newest N checkpoints, deleting older ones after each save (None: keep all)."""
    keep_every: typing.Optional[int] = None
    """With keep_last: also keep, for good, the checkpoints of steps divisible by M."""
    threads: typing.Optional[int] = None
    """torch intra-op threads on CPU (None: torch's default)."""
    peak_flops: typing.Optional[float] = None
    """Per-rank FLOP/s for MFU in metrics (see `huginn-db peak`); None: on a GPU of huginn_db/gpus.py
    its dense datasheet peak for the run's precision, elsewhere no MFU."""
    skip_nonfinite: int = 0
    """Steps with a non-finite loss or gradient skipped (no update) before the next one stops the
    run (exit 3); 0: stop at the first."""
    dist_timeout: float = 1800.0
    """Seconds a collective waits for the other ranks before the run stops (exit 5) instead of
    hanging; covers rank 0 evaluating alone at the end, so keep it above that."""

    def __post_init__(self):
        if min(self.micro_batch_size, self.grad_accum, self.max_steps + 1, self.log_every) < 1:
            raise ValueError("micro_batch_size, grad_accum and log_every must be >= 1, max_steps >= 0")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0:
            raise ValueError(
                f"need lr > 0 (got {self.lr}), 0 <= min_lr_ratio <= 1 (got {self.min_lr_ratio}) "
                f"and warmup_steps >= 0 (got {self.warmup_steps})"
            )
        if self.skip_nonfinite < 0 or self.save_every < 0 or not self.dist_timeout > 0:
            raise ValueError("skip_nonfinite and save_every must be >= 0 and dist_timeout > 0")
        if min(n for n in (self.keep_last, self.keep_every, 1) if n is not None) < 1:
            raise ValueError(f"keep_last and keep_every must be >= 1 or null, got {self.keep_last}, {self.keep_every}")
        if self.keep_every is not None and self.keep_last is None:
            raise ValueError("keep_every needs keep_last (without it every checkpoint is kept)")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto|bf16|fp32, got {self.precision!r}")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must be in (0, 1], got {self.decay_fraction:g}")
        decay = math.ceil(self.decay_fraction * self.max_steps)
        if self.schedule in ("wsd", "trapezoid") and self.max_steps and self.warmup_steps + decay > self.max_steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} plus the {self.schedule} decay "
                f"(decay_fraction × max_steps = {decay} steps) exceeds max_steps={self.max_steps}"
            )


@dataclass
class EvalConfig:
    num_steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    """Test-time loop iterations of the end-of-run evaluation ([]: skip it)."""
    batch_size: int = 500
    """Reasoning problems decoded per batch."""
    max_val_batches: int = 8
    """Text runs: validation loss over at most this many batches."""
    every: int = 0
    """In-training evaluation every N steps (0: off), logged to metrics.jsonl."""
    every_examples: int = 50
    """Reasoning problems per difficulty for the in-training evaluation."""
    every_num_steps: list[int] = field(default_factory=list)
    """Test-time iterations of the in-training evaluation ([]: the objective's default depth)."""
    every_difficulties: list[int] = field(default_factory=list)
    """Reasoning difficulties of the in-training evaluation ([]: every test difficulty)."""

    def __post_init__(self):
        if self.num_steps and min(self.num_steps) < 1:
            raise ValueError(f"num_steps must list test-time iterations >= 1, got {self.num_steps}")
        if min(self.batch_size, self.max_val_batches, self.every_examples) < 1 or self.every < 0:
            raise ValueError("batch_size, max_val_batches and every_examples must be >= 1, every >= 0")
        if self.every_num_steps and min(self.every_num_steps) < 1:
            raise ValueError(f"every_num_steps must list test-time iterations >= 1, got {self.every_num_steps}")


@dataclass
class RunConfig:
    run_dir: str = "runs/default"
    """Where metrics.jsonl, config.yaml, checkpoints/ and eval/ go."""
    seed: int = 0
    """Seeds the model init, the training stream, σ and r draws (not the test problems)."""
    deepspeed: str = "deepspeed/zero0.json"
    """DeepSpeed JSON, relative to the recipe's directory or the CWD."""
    overwrite: bool = False
    """Replace an existing run in run_dir (metrics and checkpoints)."""
    resume: typing.Literal["never", "auto"] = "never"
    """auto: continue from run_dir/checkpoints/latest if present."""
    label: str = ""
    """This run's name in reports and plots ("": its objective's); `compare` sets it for variants."""
    init_from: str = ""
    """Start from the weights of this export or run directory (e.g. a `huginn-db import` of a
    Huginn checkpoint) instead of a fresh init; same model shape. σ-conditioning it lacks (DB
    fine-tuning a BPTT model) starts zero-initialised, so step 0 computes what it computed."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The looped model: prelude, core, coda."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    """How the loop is trained."""
    data: DataConfig = field(default_factory=DataConfig)
    """What it is trained and evaluated on."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimizer, schedule, precision, logging, checkpoints, fault policy."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """The trainer's own evaluation."""

    def __post_init__(self):
        if self.resume == "auto" and self.overwrite:
            raise ValueError(
                "resume=auto and overwrite=true contradict each other (continue the run, or replace it); pass one"
            )
        if self.data.name == "text" and self.data.text.seq_len > self.model.context:
            raise ValueError(f"data.text.seq_len={self.data.text.seq_len} exceeds model.context={self.model.context}")

    def objective_config(self):
        return getattr(self.objective, self.objective.name)


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


def _merge(base: dict, child: dict) -> dict:
    """child over base, section by section."""
    out = dict(base)
    for key, value in child.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A recipe's mapping with `base:` (a recipe path, relative to this one) merged under it."""
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}" + (f" (the base of {seen[-1]})" if seen else ""))
    if path.resolve() in seen:
        raise ConfigError(f"recipe {path}: `base:` chain loops back to itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping at the top level")
    ds = data.get("deepspeed")
    if seen and isinstance(ds, str) and not Path(ds).is_absolute() and (path.parent / ds).is_file():
        data["deepspeed"] = str((path.parent / ds).resolve())  # a base's paths are relative to the base
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"recipe {path}: base must be a recipe path, got {base!r}")
    return _merge(read_recipe(path.parent / base, (*seen, path.resolve())), data)


def load_config(recipe: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Recipe (with its `base:` chain) + dotted overrides → a checked RunConfig."""
    path = Path(recipe)
    data = read_recipe(path)
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
    text = cfg.data.text
    if text.prepared:  # recorded absolute, so evaluation finds it from anywhere
        text.prepared = str(Path(text.prepared).expanduser().resolve())
    text.mixture = [str(Path(d).expanduser().resolve()) for d in text.mixture]
    validate(cfg)
    zero = check_deepspeed_json(cfg).get("zero_optimization", {}).get("stage", 0)
    db = cfg.objective.diffusion_blocks
    # ZeRO-3 gathers the core's weights at every call: every rank must make as many. A micro-batch
    # holds every σ band when it has num_bands rows, so each rank unrolls the same number of calls.
    if (
        cfg.objective.name == "diffusion_blocks"
        and db.unroll > 1
        and zero == 3
        and cfg.train.micro_batch_size < db.num_bands
    ):
        raise ConfigError(
            f"objective.diffusion_blocks.unroll={db.unroll} under ZeRO-3 needs train.micro_batch_size >= num_bands "
            f"({cfg.train.micro_batch_size} < {db.num_bands}): ranks would make different numbers of denoiser calls"
        )
    return cfg


# DeepSpeed keys the recipe owns: (JSON key, recipe key, recipe value)
def _ds_owned(cfg: RunConfig) -> list[tuple[str, str, object]]:
    t = cfg.train
    return [
        ("train_micro_batch_size_per_gpu", "train.micro_batch_size", t.micro_batch_size),
        ("gradient_accumulation_steps", "train.grad_accum", t.grad_accum),
        ("gradient_clipping", "train.grad_clip", t.grad_clip),
    ]


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
            raise ConfigError(
                f"deepspeed: {key}={ds[key]} in {path.name} contradicts {ours}={value}; "
                f"drop it from the JSON (the recipe sets it) or set {ours}={ds[key]}"
            )
    if world_size is not None and "train_batch_size" in ds:
        want = cfg.train.micro_batch_size * cfg.train.grad_accum * world_size
        if ds["train_batch_size"] != want:
            raise ConfigError(
                f"deepspeed: train_batch_size={ds['train_batch_size']} in {path.name} contradicts "
                f"train.micro_batch_size × train.grad_accum × {world_size} ranks = {want}; drop it from the JSON"
            )
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ConfigError(
                f"deepspeed: {path.name} has an '{key}' section, but the trainer builds AdamW and the "
                f"lr schedule (train.schedule) from train.*; remove '{key}' from the JSON"
            )
    if (ds.get("fp16") or {}).get("enabled"):
        raise ConfigError(
            f"deepspeed: {path.name} enables fp16, which this trainer does not support; "
            f"remove it and use train.precision=bf16"
        )
    for key in ("bf16", "torch_autocast"):
        if (ds.get(key) or {}).get("enabled"):
            raise ConfigError(
                f"deepspeed: {path.name} enables '{key}', but the model's forward owns mixed precision "
                f"(bf16 autocast over fp32 weights, from train.precision); remove '{key}' from the JSON "
                f"and set train.precision=bf16"
            )
    if cfg.model.compile_core and (ds.get("zero_optimization") or {}).get("stage", 0) == 3:
        raise ConfigError(
            "model.compile_core=true is not supported with ZeRO-3 (its parameter hooks break the "
            "compiled graph); use ZeRO 0-2 or model.compile_core=false"
        )
    return ds


def validate(cfg: RunConfig) -> None:
    """Checks that need more than the dataclasses' own fields (each checks itself on construction)."""
    if cfg.data.name == "reasoning":
        try:
            family = build_family(cfg.data.reasoning)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if cfg.objective.name == "oracle" and family.trace("=") is None:
            raise ConfigError(f"objective oracle needs intermediate answers, which family {family.name} does not give")
        extra = sorted(set(cfg.eval.every_difficulties) - set(cfg.data.reasoning.test_difficulties))
        if extra:
            raise ConfigError(f"eval.every_difficulties {extra} are not in data.reasoning.test_difficulties")


def resolve(cfg: RunConfig, vocab_size: int) -> RunConfig:
    """The run's config as recorded in config.yaml: the tokenizer decides the vocabulary and the
    objective whether the model carries σ-conditioning (a copy; `cfg` is not changed)."""
    model = dataclasses.replace(
        cfg.model, vocab_size=vocab_size, **OBJECTIVES[cfg.objective.name].model_options(cfg.objective_config())
    )
    return dataclasses.replace(cfg, model=model)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def keys_command(argv: list[str]) -> int:
    """`huginn-db keys [SECTION]`: every recipe key with its type, default and what it does."""
    prefix = argv[0] if argv and not argv[0].startswith("-") else ""
    rows = [r for r in keys(RunConfig) if r[0] == prefix or r[0].startswith(prefix + ".") or not prefix]
    if not rows:
        raise ConfigError(f"no recipe key or section {prefix!r} (try `huginn-db keys`)")
    for key, tp, default, doc in rows:
        if tp == "section":
            print(f"\n{key}:  {doc}")
        else:
            print(f"  {key} ({tp}) = {default!r}\n      {' '.join(doc.split())}")
    return 0
