"""Huginn checkpoints in and out (huginn_db.interop) and init_from."""

import json
import re

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from huginn_db.checkpoint import load_run
from huginn_db.cli import run_command
from huginn_db.config import RunConfig, resolve, to_dict
from huginn_db.interop import initial_weights
from huginn_db.model import RecurrentDepthLM
from huginn_db.tokenizer import CharTokenizer, HFTokenizer, load_tokenizer
from tests.test_lm_eval import _export

# the name map as Huginn's modelling code spells it, written out here independently of interop
RULES = [
    (r"^wte\.", "transformer.wte."),
    (r"^ln_f\.", "transformer.ln_f."),
    (r"^core\.adapter\.", "transformer.adapter."),
    (r"^prelude\.", "transformer.prelude."),
    (r"^core\.layers\.", "transformer.core_block."),
    (r"^coda\.", "transformer.coda."),
    (r"\.n([1-4])\.", r".norm_\1."),
    (r"\.attn\.qkv\.", ".attn.Wqkv."),
]


def huginn_name(name: str) -> str:
    for a, b in RULES:
        name = re.sub(a, b, name)
    return name


def _logits(run, ids, steps=3):
    _, model, _ = load_run(run)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return model.recur(ids, steps, generator=g)


def _huginn_checkpoint(directory, tok, heads=4, hidden=32):
    """A Huginn-format checkpoint from a random model: Huginn's names and shapes, two safetensors
    shards with an index, the RoPE buffer Huginn saves, the tied head written out, config.json."""
    cfg = RunConfig()
    cfg.model.vocab_size, cfg.model.hidden, cfg.model.heads, cfg.model.mlp_hidden = tok.vocab_size, hidden, heads, 64
    cfg.model.prelude_layers, cfg.model.core_layers, cfg.model.coda_layers, cfg.model.context = 1, 2, 1, 64
    torch.manual_seed(3)
    model = RecurrentDepthLM(cfg.model)
    for name, p in model.named_parameters():
        if name.endswith("qk_bias"):  # non-zero, so a wrong reshape shows
            torch.nn.init.normal_(p, std=0.1)
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith("qk_bias"):
            v = v.reshape(2, 1, heads, hidden // heads)
        state[huginn_name(k)] = v.clone()
    state["lm_head.weight"] = state["transformer.wte.weight"].clone()
    state["freqs_cis"] = torch.randn(1, 64, hidden // heads // 2, 2)
    directory.mkdir()
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(directory / file))
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {
        "n_embd": hidden,
        "n_heads": heads,
        "n_layers_in_prelude": 1,
        "n_layers_in_recurrent_block": 2,
        "n_layers_in_coda": 1,
        "intermediate_size": 64,
        "vocab_size": tok.vocab_size,
        "block_size": 64,
        "rope_base": 50000.0,
        "norm_eps": 1e-6,
        "mean_recurrence": 4,
        "mean_backprop_depth": 2,
        "tie_embeddings": True,
    }
    (directory / "config.json").write_text(json.dumps(config))
    tok.save_hf(directory)
    return model, config


def test_export_then_import_round_trips_weights_logits_and_tokenizer(tmp_path):
    tok = CharTokenizer()
    run = _export(tmp_path / "bptt", "bptt", tok, context=32)
    assert run_command("export", [str(run), "--out", str(tmp_path / "hug"), "--format", "huginn"]) == 0
    hug = load_file(tmp_path / "hug" / "model.safetensors")
    assert "transformer.core_block.0.attn.Wqkv.weight" in hug and hug["transformer.prelude.0.attn.qk_bias"].dim() == 4
    config = json.loads((tmp_path / "hug" / "config.json").read_text())
    assert (config["n_embd"], config["n_layers_in_recurrent_block"], config["tie_embeddings"]) == (32, 1, True)
    assert run_command("import", [str(tmp_path / "hug"), "--out", str(tmp_path / "back")]) == 0
    a, b = load_file(run / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.tensor([tok.encode("ab=3;c?")])
    assert torch.equal(_logits(run, ids), _logits(tmp_path / "back", ids))
    back = load_tokenizer(tmp_path / "back")
    assert isinstance(back, HFTokenizer) and back.encode("ab=3;c?") == tok.encode("ab=3;c?")


def test_a_huginn_checkpoint_imports_and_scores(tmp_path):
    tok = CharTokenizer()
    model, _ = _huginn_checkpoint(tmp_path / "huginn", tok)
    out = tmp_path / "imported"
    assert run_command("import", [str(tmp_path / "huginn"), "--out", str(out)]) == 0
    cfg, imported, objective = load_run(out)
    assert (cfg.objective.name, cfg.objective.bptt.mean_recurrence, cfg.objective.bptt.backprop_depth) == ("bptt", 4, 2)
    assert all(torch.equal(v, imported.state_dict()[k]) for k, v in model.state_dict().items())
    ids = torch.tensor([tok.encode("12+3=")])
    s0 = torch.randn(1, ids.shape[1], 32)
    with torch.no_grad():
        assert torch.equal(model.recur(ids, 4, state=s0), imported.recur(ids, 4, state=s0))
    # scored through lm-eval like any export
    assert run_command("eval", [str(out), "--tasks", "reasoning_cups_d1", "--num-steps", "2", "--limit", "3"]) == 0


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d.joinpath("config.json").write_text(json.dumps({"n_embd": 32})), "not a Huginn config"),
        (lambda d: _edit_config(d, tie_embeddings=False), "untied"),
        (lambda d: _edit_config(d, n_embd=64), "has shape"),
        (lambda d: _edit_weights(d, lambda s: s.pop("transformer.coda.0.mlp.fc.weight")), "missing weight"),
        (lambda d: _edit_weights(d, lambda s: s.update(extra=torch.zeros(1))), "unknown weight extra"),
        (
            lambda d: _edit_weights(d, lambda s: s.update({"lm_head.weight": torch.zeros_like(s["lm_head.weight"])})),
            "untied head",
        ),
        (lambda d: d.joinpath("model-00002-of-00002.safetensors").unlink(), "which is missing"),
    ],
)
def test_bad_huginn_checkpoints_are_one_line_errors(tmp_path, capsys, damage, message):
    _huginn_checkpoint(tmp_path / "huginn", CharTokenizer())
    damage(tmp_path / "huginn")
    assert run_command("import", [str(tmp_path / "huginn"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def _edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **changes}))


def _edit_weights(directory, edit):
    state = {}
    files = sorted(directory.glob("*.safetensors"))
    for f in files:
        state.update(load_file(f))
        f.unlink()
    edit(state)
    save_file(state, str(directory / "model.safetensors"))
    (directory / "model.safetensors.index.json").unlink()


def test_a_diffusion_blocks_model_is_not_exported_to_huginn(tmp_path, capsys):
    run = _export(tmp_path / "db", "diffusion_blocks", CharTokenizer(), context=32)
    assert run_command("export", [str(run), "--out", str(tmp_path / "hug"), "--format", "huginn"]) == 2
    assert "no Huginn form" in capsys.readouterr().err


def test_init_from_adds_zero_sigma_conditioning_that_keeps_the_pretrained_loop(tmp_path):
    """A DB model started from a BPTT export: the pretrained weights, AdaLN-Zero and the
    self-conditioning projection at zero, so the σ-free loop gives the pretrained logits."""
    tok = CharTokenizer()
    src = _export(tmp_path / "bptt", "bptt", tok, context=32)
    cfg = RunConfig()
    cfg.model = load_run(src)[0].model
    cfg.objective.name = "diffusion_blocks"
    cfg.objective.diffusion_blocks.self_condition = "latent"
    cfg = resolve(cfg, tok.vocab_size)
    db = RecurrentDepthLM(cfg.model)
    kept = initial_weights(db, src)
    assert kept and all(re.search(r"sigma_embed|\.ada\.|self_cond", k) for k in kept)
    assert all(not p.any() for k, p in db.state_dict().items() if ".ada." in k or "self_cond" in k)
    ids = torch.tensor([tok.encode("ab=3;c?")])
    s0 = torch.randn(1, ids.shape[1], cfg.model.hidden)
    _, pre, _ = load_run(src)
    with torch.no_grad():
        assert torch.equal(db.recur(ids, 3, state=s0), pre.recur(ids, 3, state=s0))
        # and the σ path runs the same core with the modulation at identity
        e = db.encode(ids)
        h_db = db.core_step(s0, e, cond=db.sigma_embed(torch.zeros(1, 1)))
        assert torch.equal(h_db, pre.core_step(s0, pre.encode(ids)))


def test_init_from_refuses_another_shape(tmp_path):
    src = _export(tmp_path / "bptt", "bptt", CharTokenizer(), context=32)
    cfg = yaml.safe_load((src / "config.yaml").read_text())
    other = RunConfig()
    other.model.vocab_size, other.model.hidden = cfg["model"]["vocab_size"], 64
    with pytest.raises(Exception, match="hidden 32 vs 64"):
        initial_weights(RecurrentDepthLM(other.model), src)
    assert to_dict(other)["init_from"] == ""


@pytest.mark.slow
def test_a_db_run_trains_from_a_bptt_run(tmp_path):
    """init_from in a recipe: the DB run starts from the BPTT run's weights (a tiny lr keeps
    them), its σ-conditioning zero (AdaLN-Zero) apart from the σ embedding's own init."""
    import subprocess
    import sys

    from tests.conftest import RECIPES

    tiny = [
        "train.max_steps=4",
        "train.micro_batch_size=8",
        "model.hidden=32",
        "model.mlp_hidden=64",
        "eval.num_steps=[]",
    ]

    def train(recipe, run, *extra):
        cmd = [sys.executable, "-m", "huginn_db.cli", "train", str(RECIPES / recipe), f"run_dir={run}", *tiny, *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    train("demo-bptt.yaml", tmp_path / "bptt")
    train("demo-db.yaml", tmp_path / "db", f"init_from={tmp_path / 'bptt'}", "train.lr=1e-12", "train.max_steps=1")
    _, pre, _ = load_run(tmp_path / "bptt")
    _, db, _ = load_run(tmp_path / "db")
    ours = db.state_dict()
    for k, v in pre.state_dict().items():
        assert torch.allclose(ours[k], v, atol=1e-8), k
    assert all(ours[k].abs().max() < 1e-8 for k in ours if ".ada." in k)
    bad = subprocess.run(
        [sys.executable, "-m", "huginn_db.cli", "train", str(RECIPES / "demo-db.yaml"), f"run_dir={tmp_path / 'x'}"]
        + [f"init_from={tmp_path / 'bptt'}", "train.max_steps=1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert (
        bad.returncode == 2 and "its model differs from this recipe's" in bad.stderr and not (tmp_path / "x").exists()
    )
