import dataclasses

import pytest
import yaml

from huginn_db.config import ConfigError, load_config, to_dict
from huginn_db.configdoc import field_docs
from huginn_db.data.families import FAMILIES, ChainConfig, CupsConfig, ModSumConfig
from huginn_db.data.reasoning import ReasoningConfig
from huginn_db.data.text import TextConfig
from huginn_db.model import ModelConfig
from huginn_db.objectives.deep_supervision import DeepSupervisionConfig
from tests.conftest import RECIPES

# the config dataclasses that document and check their own fields
SELF_CHECKING = [
    ModelConfig,
    ReasoningConfig,
    TextConfig,
    DeepSupervisionConfig,
    *(family.config for family in FAMILIES.values()),
]


def test_paired_recipes_inherit_everything_but_the_objective():
    for pair in ("demo", "depth", "paper-lm1b", "paper-lm1b-cpu", "text-small", "huginn-3.5b"):
        db, bptt = (to_dict(load_config(RECIPES / f"{pair}-{o}.yaml")) for o in ("db", "bptt"))
        assert yaml.safe_load((RECIPES / f"{pair}-bptt.yaml").read_text())["base"] == f"{pair}-db.yaml"
        assert db.pop("objective")["name"] == "diffusion_blocks" and bptt.pop("objective")["name"] == "bptt"
        assert db.pop("run_dir") != bptt.pop("run_dir")
        assert db == bptt, pair
    cfg = load_config(RECIPES / "demo-db.yaml")
    assert cfg.deepspeed.endswith("recipes/deepspeed/zero0.json")


def test_base_recipes_merge_section_by_section(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "deepspeed: %s\ntrain: {max_steps: 5, lr: 0.01}\nseed: 3\n" % (RECIPES / "deepspeed" / "zero0.json")
    )
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain: {max_steps: 7}\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\nseed: 4\n")
    cfg = load_config(tmp_path / "c.yaml", ["train.warmup_steps=2"])
    assert (cfg.train.max_steps, cfg.train.lr, cfg.train.warmup_steps, cfg.seed) == (7, 0.01, 2, 4)
    (tmp_path / "loop.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "loop.yaml")
    # a base elsewhere: its relative DeepSpeed path is relative to the base, not to the child
    (tmp_path / "mine.yaml").write_text(f"base: {RECIPES / 'demo-db.yaml'}\nmodel: {{hidden: 96}}\n")
    cfg = load_config(tmp_path / "mine.yaml")
    assert cfg.deepspeed == str((RECIPES / "deepspeed" / "zero0.json").resolve()) and cfg.model.hidden == 96
    (tmp_path / "orphan.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"recipe not found: .*missing.yaml \(the base of"):
        load_config(tmp_path / "orphan.yaml")


def test_print_config_is_the_resolved_recipe(capsys):
    from huginn_db.cli import main

    assert main(["train", str(RECIPES / "demo-bptt.yaml"), "--print-config", "train.max_steps=9"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == to_dict(load_config(RECIPES / "demo-bptt.yaml", ["train.max_steps=9"]))
    assert printed["objective"]["name"] == "bptt" and printed["train"]["max_steps"] == 9


def test_every_key_is_listed_with_type_default_and_doc(capsys):
    from huginn_db.cli import main
    from huginn_db.config import RunConfig, keys

    rows = keys(RunConfig)
    leaves = {k for k, tp, _, _ in rows if tp != "section"}
    assert {
        "train.lr",
        "objective.name",
        "objective.bptt.backprop_depth",
        "objective.diffusion_blocks.sampler",
        "data.reasoning.cups.random_start",
        "model.attention",
    } <= leaves
    assert all(doc for _, _, _, doc in rows), [k for k, _, _, d in rows if not d]
    assert ("model.attention", "auto|sdpa|xformers", "auto") == next(r[:3] for r in rows if r[0] == "model.attention")
    assert dict((k, d) for k, _, d, _ in rows if k in leaves)["train.max_steps"] == RunConfig().train.max_steps
    assert main(["keys", "train"]) == 0
    out = capsys.readouterr().out
    assert "train.skip_nonfinite (int) = 0" in out and "model." not in out
    assert main(["keys", "nope"]) == 2


def test_dotted_overrides_are_typed():
    cfg = load_config(
        RECIPES / "demo-bptt.yaml",
        [
            "train.max_steps=7",
            "run_dir=/tmp/x",
            "objective.bptt.mean_recurrence=4",
            "data.reasoning.train_difficulties=[1,2]",
            "deepspeed=deepspeed/zero3.json",
            "train.lr=1e-3",
        ],
    )
    assert cfg.train.max_steps == 7 and cfg.run_dir == "/tmp/x"
    assert cfg.objective.bptt.mean_recurrence == 4
    assert cfg.data.reasoning.train_difficulties == [1, 2]
    assert cfg.deepspeed.endswith("zero3.json") and cfg.train.lr == 1e-3


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.max_step=3", "unknown key 'train.max_step' (did you mean 'train.max_steps'?)"),
        ("train.max_steps=many", "train.max_steps: expected int"),
        ("model.hidden=100", "model.hidden=100 must split into heads=4"),
        ("objective.name=adjoint", "objective.name must be bptt|deep_supervision|diffusion_blocks"),
        ("objective.diffusion_blocks.sigma_min=100", "sigma_min < sigma_max"),
        ("deepspeed=missing.json", "deepspeed: config file not found"),
        ("train.precision=fp16", "train.precision must be auto|bf16|fp32"),
        ("objective.deep_supervision.grad_steps=0", "grad_steps must be >= 1, got 0"),
        ("objective.deep_supervision.loss_weights=first", "loss_weights must be uniform|linear|last"),
        ("maxsteps", "must look like dotted.key=value"),
        ("eval.every_difficulties=[8,30]", "eval.every_difficulties [30] are not in data.reasoning.test_difficulties"),
        ("eval.every_num_steps=[0]", "every_num_steps must list test-time iterations >= 1"),
    ],
)
def test_bad_overrides_fail_with_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(RECIPES / "demo-db.yaml", [override])
    assert message in str(err.value)


@pytest.mark.parametrize("cls", SELF_CHECKING, ids=lambda c: c.__name__)
def test_every_field_has_a_docstring_and_the_defaults_pass(cls):
    docs = field_docs(cls)
    assert [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)] == []
    cls()


# (class, kwargs, the message's start: the bare field name, so the loader can prefix the section)
FIELD_FAULTS = [
    (ModelConfig, {"hidden": 130, "heads": 4}, "hidden=130 must split into heads=4 heads of even size"),
    (ModelConfig, {"hidden": 96, "heads": 32}, "hidden=96 must split into heads=32 heads of even size"),
    (ModelConfig, {"heads": 0}, "heads must be >= 1, got 0"),
    (ModelConfig, {"vocab_size": 1}, "vocab_size must be >= 2, got 1"),
    (ModelConfig, {"context": 1}, "context must be >= 2, got 1"),
    (ModelConfig, {"mlp_hidden": 0}, "mlp_hidden must be >= 1"),
    (ModelConfig, {"prelude_layers": -1}, "prelude_layers must be >= 0"),
    (ModelConfig, {"core_layers": 0}, "core_layers must be >= 1"),
    (ModelConfig, {"coda_layers": -1}, "coda_layers must be >= 0"),
    (ModelConfig, {"init_recurrence": 0}, "init_recurrence must be >= 1"),
    (ModelConfig, {"rope_base": 0.0}, "rope_base must be > 0"),
    (ModelConfig, {"norm_eps": -1e-6}, "norm_eps must be >= 0"),
    (ModelConfig, {"sigma_embed_dim": 127}, "sigma_embed_dim must be even and >= 2"),
    (ModelConfig, {"attention": "flash"}, "attention must be auto|sdpa|xformers, got 'flash'"),
    (ModelConfig, {"loss_chunk": -1}, "loss_chunk must be >= 0 (0: full logits), got -1"),
    (ChainConfig, {"modulus": 6}, "modulus must be a prime below 10"),
    (ChainConfig, {"modulus": 11}, "modulus must be a prime below 10"),
    (ChainConfig, {"ops": ""}, "ops must be a non-empty subset of '+-*='"),
    (ChainConfig, {"ops": "+/"}, "ops must be a non-empty subset of '+-*=', got '+/'"),
    (ChainConfig, {"ops": "*", "modulus": 2}, "ops='*' needs modulus > 2"),
    (ChainConfig, {"chains": 0}, "chains must be >= 1, got 0"),
    (ChainConfig, {"distractors": -1}, "distractors must be >= 0, got -1"),
    (CupsConfig, {"cups": 1}, "cups must be 2..7"),
    (CupsConfig, {"cups": 8}, "cups must be 2..7"),
    (ModSumConfig, {"modulus": 1}, "modulus must be 2..10"),
    (ModSumConfig, {"modulus": 11}, "modulus must be 2..10"),
    (ReasoningConfig, {"family": "sudoku"}, "family must be one of chain|modsum|cups|perm|jsonl, got 'sudoku'"),
    (ReasoningConfig, {"train_difficulties": []}, "train_difficulties must be a non-empty list of integers >= 0"),
    (ReasoningConfig, {"train_difficulties": [-1, 2]}, "train_difficulties must be a non-empty list of integers >= 0"),
    (ReasoningConfig, {"test_difficulties": []}, "test_difficulties must be a non-empty list of integers >= 1"),
    (
        ReasoningConfig,
        {"test_difficulties": [0, 1]},
        "test_difficulties must be a non-empty list of integers >= 1, got [0, 1] (difficulty 0",
    ),
    (ReasoningConfig, {"test_examples": 0}, "test_examples must be >= 1, got 0"),
    (ReasoningConfig, {"test_seed": -1}, "test_seed must be >= 0, got -1"),
    (ReasoningConfig, {"prompt_loss_weight": -0.5}, "prompt_loss_weight must be >= 0, got -0.5"),
    (ReasoningConfig, {"prompt_loss_weight": float("nan")}, "prompt_loss_weight must be >= 0, got nan"),
    (TextConfig, {"files": ["a.txt"], "dataset": "roneneldan/TinyStories"}, "files and dataset are both set"),
    (TextConfig, {"format": "csv"}, "format must be auto|text|json|parquet, got 'csv'"),
    (TextConfig, {"seq_len": 0}, "seq_len must be >= 1, got 0"),
    (TextConfig, {"val_fraction": 1.0}, "val_fraction must be in [0, 1), got 1.0"),
    (TextConfig, {"val_fraction": -0.1}, "val_fraction must be in [0, 1)"),
    (TextConfig, {"streaming": True}, "streaming was retired"),
    (DeepSupervisionConfig, {"grad_steps": 0}, "grad_steps must be >= 1, got 0"),
    (DeepSupervisionConfig, {"damping": 1.0}, "damping must be in [0, 1), got 1.0"),
    (DeepSupervisionConfig, {"damping": float("nan")}, "damping must be in [0, 1), got nan"),
    (DeepSupervisionConfig, {"state_noise": -0.1}, "state_noise must be >= 0, got -0.1"),
    (DeepSupervisionConfig, {"loss_weights": "first"}, "loss_weights must be uniform|linear|last, got 'first'"),
]


@pytest.mark.parametrize(
    "cls,kwargs,message",
    FIELD_FAULTS,
    ids=[f"{c.__name__}-{'-'.join(map(str, kw.items()))}" for c, kw, _ in FIELD_FAULTS],
)
def test_field_check_names_the_bare_field(cls, kwargs, message):
    with pytest.raises(ValueError) as err:
        cls(**kwargs)
    text = str(err.value)
    assert text.startswith(message) and "\n" not in text


def test_family_check_follows_the_registry(monkeypatch):
    from huginn_db.data import families

    monkeypatch.setitem(families.FAMILIES, "sudoku", families.FAMILIES["perm"])
    assert ReasoningConfig(family="sudoku").family == "sudoku"  # checked against the registry, not a fixed list


def test_compare_objective_variants_parse_and_bad_ones_fail_with_the_entry():
    from huginn_db.compare import Variant, steps_for_budget

    v = Variant.parse("diffusion_blocks:self_condition=latent,self_condition_prob=0.7")
    assert v.overrides == [
        "objective.name=diffusion_blocks",
        "objective.diffusion_blocks.self_condition=latent",
        "objective.diffusion_blocks.self_condition_prob=0.7",
    ]
    assert v.label == "DB self_condition=latent self_condition_prob=0.7"
    assert v.slug == "db-self_condition-latent-self_condition_prob-0.7" and Variant.parse("bptt").label == ""
    with pytest.raises(ConfigError, match="unknown objective 'adjoint'"):
        Variant.parse("adjoint:x=1")
    with pytest.raises(ConfigError, match="expected bptt:key=value"):
        Variant.parse("bptt:backprop_depth")
    # the plain reference objective sets the budget; a variant's extra passes buy it fewer steps
    steps, budget = steps_for_budget(
        str(RECIPES / "demo-db.yaml"), [], None, ["diffusion_blocks:self_condition=latent", "bptt", "diffusion_blocks"]
    )
    assert steps["bptt"] == 1500 and steps["diffusion_blocks"] > steps["diffusion_blocks:self_condition=latent"] > 1500
