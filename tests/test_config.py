import pytest
import yaml

from huginn_db.config import ConfigError, load_config
from tests.conftest import RECIPES


def test_recipes_load_and_demo_pair_differs_only_in_objective():
    db = yaml.safe_load((RECIPES / "demo-db.yaml").read_text())
    bptt = yaml.safe_load((RECIPES / "demo-bptt.yaml").read_text())
    assert db.pop("objective")["name"] == "diffusion_blocks"
    assert bptt.pop("objective")["name"] == "bptt"
    db.pop("run_dir"), bptt.pop("run_dir")
    assert db == bptt
    cfg = load_config(RECIPES / "demo-db.yaml")
    assert cfg.deepspeed.endswith("recipes/deepspeed/zero0.json")


def test_dotted_overrides_are_typed():
    cfg = load_config(RECIPES / "demo-bptt.yaml", [
        "train.max_steps=7", "run_dir=/tmp/x", "objective.bptt.mean_recurrence=4",
        "data.reasoning.train_difficulties=[1,2]", "deepspeed=deepspeed/zero3.json", "train.lr=1e-3"])
    assert cfg.train.max_steps == 7 and cfg.run_dir == "/tmp/x"
    assert cfg.objective.bptt.mean_recurrence == 4
    assert cfg.data.reasoning.train_difficulties == [1, 2]
    assert cfg.deepspeed.endswith("zero3.json") and cfg.train.lr == 1e-3


@pytest.mark.parametrize("override,message", [
    ("train.max_step=3", "unknown key 'train.max_step' (did you mean 'train.max_steps'?)"),
    ("train.max_steps=many", "train.max_steps: expected int"),
    ("model.hidden=100", "model.hidden=100 must split into model.heads=4"),
    ("objective.name=adjoint", "objective.name must be bptt|diffusion_blocks"),
    ("objective.diffusion_blocks.sigma_min=100", "sigma_min < sigma_max"),
    ("deepspeed=missing.json", "deepspeed: config file not found"),
    ("train.precision=fp16", "train.precision must be auto|bf16|fp32"),
    ("maxsteps", "must look like dotted.key=value"),
])
def test_bad_overrides_fail_with_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(RECIPES / "demo-db.yaml", [override])
    assert message in str(err.value)
