"""Huginn checkpoints in and out, and the weights a run starts from (`init_from`).

    huginn-db import DIR --out RUN [--objective bptt]     a Huginn checkpoint → an export dir
    huginn-db export RUN --out DIR --format huginn         the reverse

A Huginn checkpoint directory holds config.json (Huginn's fields: n_embd, n_heads,
n_layers_in_prelude / n_layers_in_recurrent_block / n_layers_in_coda, intermediate_size,
vocab_size (padded_vocab_size when larger), block_size, rope_base, norm_eps, mean_recurrence,
mean_backprop_depth, tie_embeddings), its weights as model.safetensors, safetensors shards
with model.safetensors.index.json, or pytorch_model.bin, and an HF tokenizer (tokenizer.json
read with `tokenizers`, its special tokens from tokenizer_config.json) or a sentencepiece
tokenizer.model. The names (ours ↔ Huginn's):

    wte ↔ transformer.wte              ln_f ↔ transformer.ln_f
    core.adapter ↔ transformer.adapter prelude.i ↔ transformer.prelude.i
    core.layers.i ↔ transformer.core_block.i                 coda.i ↔ transformer.coda.i
    inside a block: nK ↔ norm_K, attn.qkv ↔ attn.Wqkv, attn.qk_bias (2h) ↔ attn.qk_bias
    (2, 1, heads, head_dim); attn.proj, mlp.fc, mlp.proj unchanged; lm_head tied to wte.

Huginn has no σ-conditioning: a DiffusionBlocks model's AdaLN/σ-embedding weights have no
Huginn name, so exporting one is refused; importing gives a plain looped model that any
objective can train on (`init_from`), DB adding its σ parameters zero-initialised.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from pathlib import Path

import torch
import yaml

from huginn_db.config import RunConfig, to_dict
from huginn_db.errors import CheckpointError, ConfigError
from huginn_db.model import RecurrentDepthLM
from huginn_db.model_config import ModelConfig

log = logging.getLogger(__name__)

# ours → Huginn's, by prefix; the rest of a name is mapped inside a block (_BLOCK)
_PREFIXES = (
    ("wte.", "transformer.wte."),
    ("ln_f.", "transformer.ln_f."),
    ("core.adapter.", "transformer.adapter."),
    ("prelude.", "transformer.prelude."),
    ("core.layers.", "transformer.core_block."),
    ("coda.", "transformer.coda."),
)
_BLOCK = {"n1": "norm_1", "n2": "norm_2", "n3": "norm_3", "n4": "norm_4", "attn.qkv": "attn.Wqkv"}
# Huginn's own buffer (the RoPE table), rebuilt from rope_base here
_DERIVED = {"freqs_cis"}
# our σ-conditioning and self-conditioning weights: no Huginn name
_SIGMA = re.compile(r"(^sigma_embed\.|\.ada\.|^core\.self_cond\.)")


def _rename(name: str, table: tuple[tuple[str, str], ...], block: dict[str, str]) -> str | None:
    for a, b in table:
        if name.startswith(a):
            rest = name[len(a) :]
            if a.endswith(("prelude.", "core.layers.", "core_block.", "coda.")):
                index, _, inner = rest.partition(".")
                for x, y in block.items():
                    if inner == x or inner.startswith(x + "."):
                        inner = y + inner[len(x) :]
                        break
                rest = f"{index}.{inner}"
            return b + rest
    return None


def to_huginn_name(name: str) -> str | None:
    return _rename(name, _PREFIXES, _BLOCK)


def from_huginn_name(name: str) -> str | None:
    return _rename(name, tuple((b, a) for a, b in _PREFIXES), {v: k for k, v in _BLOCK.items()})


# --- config ---------------------------------------------------------------------------------


def huginn_config(cfg: RunConfig) -> dict:
    m = cfg.model
    ob = cfg.objective.bptt
    return {
        "architectures": ["RavenForCausalLM"],
        "model_type": "huginn_raven",
        "n_embd": m.hidden,
        "n_heads": m.heads,
        "num_attention_heads": m.heads,
        "num_key_value_heads": m.heads,
        "n_layers_in_prelude": m.prelude_layers,
        "n_layers_in_recurrent_block": m.core_layers,
        "n_layers_in_coda": m.coda_layers,
        "intermediate_size": m.mlp_hidden,
        "vocab_size": m.vocab_size,
        "padded_vocab_size": m.vocab_size,
        "block_size": m.context,
        "rope_base": m.rope_base,
        "norm_eps": m.norm_eps,
        "mean_recurrence": ob.mean_recurrence,
        "mean_backprop_depth": ob.backprop_depth,
        "tie_embeddings": True,
        "qk_bias": True,
        "bias": False,
        "init_values": {"embed_scale": math.sqrt(m.hidden)},
    }


def model_config(h: dict, source: str) -> tuple[ModelConfig, dict]:
    """(our ModelConfig, the objective keys it implies) from a Huginn config.json."""
    need = (
        "n_embd",
        "n_heads",
        "n_layers_in_prelude",
        "n_layers_in_recurrent_block",
        "n_layers_in_coda",
        "intermediate_size",
        "vocab_size",
        "block_size",
    )
    missing = [k for k in need if k not in h]
    if missing:
        raise ConfigError(f"{source}: not a Huginn config (missing {', '.join(missing)})")
    if not h.get("tie_embeddings", True):
        raise ConfigError(f"{source}: tie_embeddings is false (an untied head); huginn_db's LM head is tied to wte")
    if h.get("bias", False):
        raise ConfigError(f"{source}: bias=true (an adapter bias) has no huginn_db weight")
    if h.get("num_key_value_heads", h["n_heads"]) != h["n_heads"]:
        raise ConfigError(f"{source}: grouped-query attention (num_key_value_heads != n_heads) is not supported")
    scale = (h.get("init_values") or {}).get("embed_scale", math.sqrt(h["n_embd"]))
    if not math.isclose(scale, math.sqrt(h["n_embd"]), rel_tol=1e-6):
        raise ConfigError(f"{source}: embed_scale {scale} is not √n_embd, which huginn_db's embedding uses")
    try:
        cfg = ModelConfig(
            vocab_size=max(h["vocab_size"], h.get("padded_vocab_size") or 0),
            hidden=h["n_embd"],
            heads=h["n_heads"],
            mlp_hidden=h["intermediate_size"],
            prelude_layers=h["n_layers_in_prelude"],
            core_layers=h["n_layers_in_recurrent_block"],
            coda_layers=h["n_layers_in_coda"],
            context=h["block_size"],
            rope_base=float(h.get("rope_base", 50_000.0)),
            norm_eps=float(h.get("norm_eps", 1e-6)),
            init_recurrence=int(h.get("mean_recurrence", 32)),
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {err}") from None
    bptt = {
        "mean_recurrence": int(h.get("mean_recurrence", 32)),
        "backprop_depth": int(h.get("mean_backprop_depth", 8)),
    }
    return cfg, bptt


# --- weights --------------------------------------------------------------------------------


def to_huginn(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    sigma = sorted(k for k in state if _SIGMA.search(k))
    if sigma:
        raise ConfigError(
            f"a σ-conditioned (DiffusionBlocks) model has no Huginn form: {sigma[0]} and {len(sigma) - 1} more "
            "weights have no Huginn name (export a BPTT, fixed-depth or deep-supervision run)"
        )
    out = {}
    for k, v in state.items():
        name = to_huginn_name(k)
        if name is None:
            raise ConfigError(f"weight {k} has no Huginn name")
        if k.endswith("attn.qk_bias"):
            v = v.reshape(2, 1, cfg.heads, cfg.head_dim)
        out[name] = v.contiguous()
    out["lm_head.weight"] = out["transformer.wte.weight"].clone()  # tied: the same values
    return out


def from_huginn(state: dict[str, torch.Tensor], cfg: ModelConfig, source: str) -> dict[str, torch.Tensor]:
    """Our state dict from Huginn's names; every unknown, missing or mis-shaped key is an error."""
    want = {k: v.shape for k, v in RecurrentDepthLM(cfg).state_dict().items() if not _SIGMA.search(k)}
    out = {}
    for k, v in state.items():
        if k in _DERIVED:
            continue
        if k == "lm_head.weight":
            wte = state.get("transformer.wte.weight")
            if wte is None or not torch.equal(v, wte):
                raise ConfigError(f"{source}: lm_head.weight differs from transformer.wte.weight (an untied head)")
            continue
        name = from_huginn_name(k)
        if name is None or name not in want:
            raise ConfigError(f"{source}: unknown weight {k}")
        if name.endswith("attn.qk_bias"):
            if v.numel() != 2 * cfg.hidden:
                raise ConfigError(
                    f"{source}: {k} has shape {tuple(v.shape)}, expected (2, 1, {cfg.heads}, {cfg.head_dim})"
                )
            v = v.reshape(2 * cfg.hidden)
        if tuple(v.shape) != tuple(want[name]):
            raise ConfigError(f"{source}: {k} has shape {tuple(v.shape)}, expected {tuple(want[name])}")
        out[name] = v.float()
    missing = sorted(set(want) - set(out))
    if missing:
        raise ConfigError(f"{source}: missing weight {to_huginn_name(missing[0])} ({len(missing)} missing)")
    return out


def read_huginn_weights(src: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = src / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{index}: not a safetensors index (no weight_map)") from None
        state = {}
        for shard in shards:
            if not (src / shard).is_file():
                raise ConfigError(f"{index} names {shard}, which is missing")
            state.update(load_file(src / shard))
        return state
    if (src / "model.safetensors").is_file():
        return load_file(src / "model.safetensors")
    if (src / "pytorch_model.bin").is_file():
        try:
            return torch.load(src / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as err:
            raise ConfigError(f"{src / 'pytorch_model.bin'}: unreadable ({type(err).__name__})") from None
    raise ConfigError(f"{src}: no weights (model.safetensors, model.safetensors.index.json or pytorch_model.bin)")


# --- commands -------------------------------------------------------------------------------


def import_huginn(src: str | Path, out: str | Path, objective: str = "bptt") -> Path:
    """A Huginn checkpoint directory → an export directory (model.safetensors, config.yaml,
    tokenizer) that eval, sample and init_from accept."""
    from safetensors.torch import save_file

    from huginn_db.config import from_dict
    from huginn_db.tokenizer import load_tokenizer

    src, out = Path(src), Path(out)
    config = src / "config.json"
    if not config.is_file():
        raise ConfigError(f"{src}: no config.json (not a Huginn checkpoint directory)")
    try:
        h = json.loads(config.read_text())
    except ValueError:
        raise ConfigError(f"{config} is not valid JSON") from None
    model, bptt = model_config(h, str(config))
    state = from_huginn(read_huginn_weights(src), model, str(src))
    try:
        tok = load_tokenizer(src)
    except ValueError as err:
        raise ConfigError(f"{src}: {err}") from None
    if tok.vocab_size > model.vocab_size:
        raise ConfigError(f"{src}: the tokenizer has {tok.vocab_size} ids, the embedding {model.vocab_size} rows")
    cfg = from_dict(
        RunConfig,
        {
            "run_dir": str(out),
            "model": to_dict(model),
            "objective": {"name": objective, "bptt": bptt},
            "data": {"name": "text", "text": {"seq_len": model.context, "tokenizer": str(out)}},
        },
    )
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(out / "model.safetensors")
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tok.save(out)
    (out / "imported_from.json").write_text(json.dumps({"source": str(src.resolve()), "huginn_config": h}, indent=1))
    return out


def export_huginn(run: str | Path, out: str | Path, tag: str | None = None) -> Path:
    """A run or export directory → a Huginn checkpoint directory (config.json, model.safetensors,
    the tokenizer)."""
    from safetensors.torch import save_file

    from huginn_db.checkpoint import consolidated_state_dict, read_config
    from huginn_db.tokenizer import load_tokenizer

    run, out = Path(run), Path(out)
    cfg = read_config(run)
    if (run / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(run / "model.safetensors")
    else:
        state = consolidated_state_dict(run, tag)
    weights = to_huginn(state, cfg.model)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.safetensors.tmp"
    save_file(weights, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(huginn_config(cfg), indent=2))
    try:
        load_tokenizer(run).save_hf(out)
    except ValueError as err:
        log.warning("no tokenizer written: %s", err)
    return out / "model.safetensors"


def main_export(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="huginn-db export", description="Consolidate a run's checkpoint to safetensors.")
    ap.add_argument("run_dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tag", default=None, help="checkpoint tag (default: latest)")
    ap.add_argument(
        "--format", choices=["huginn_db", "huginn"], default="huginn_db", help="huginn: Huginn's names and config.json"
    )
    args = ap.parse_args(argv)
    try:
        if args.format == "huginn":
            path = export_huginn(args.run_dir, args.out, args.tag)
        else:
            from huginn_db.checkpoint import export

            path = export(args.run_dir, args.out, args.tag)
    except (FileNotFoundError, KeyError, CheckpointError) as err:  # a missing or damaged checkpoint is bad input here
        raise ConfigError(str(err).strip("'\"")) from None
    print(path)
    return 0


def main_import(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="huginn-db import", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("src", help="Huginn checkpoint directory")
    ap.add_argument("--out", required=True, help="export directory to write")
    ap.add_argument("--objective", default="bptt", help="objective.name recorded for eval (default: bptt)")
    args = ap.parse_args(argv)
    print(import_huginn(args.src, args.out, args.objective))
    return 0


# --- init_from ------------------------------------------------------------------------------


def initial_weights(model: RecurrentDepthLM, src: str | Path) -> list[str]:
    """Loads an export/run directory's weights into `model` (the run's own shape); returns the
    names kept at their initialisation (σ-conditioning the source lacks: zero-initialised, so
    the σ-free paths compute what the source did). Weights the model has no use for (a DB
    source's σ-conditioning, trained into a model without it) are dropped with a warning."""
    from huginn_db.checkpoint import consolidated_state_dict, read_config

    src = Path(src)
    try:
        theirs = read_config(src).model
    except (FileNotFoundError, ConfigError, ValueError) as err:
        raise ConfigError(f"init_from: {err}") from None
    mine = model.cfg
    shape = ("vocab_size", "hidden", "heads", "mlp_hidden", "prelude_layers", "core_layers", "coda_layers")
    diff = [f"{k} {getattr(theirs, k)} vs {getattr(mine, k)}" for k in shape if getattr(theirs, k) != getattr(mine, k)]
    if diff:
        raise ConfigError(f"init_from {src}: its model differs from this recipe's ({'; '.join(diff)})")
    if (src / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(src / "model.safetensors")
    else:
        state = consolidated_state_dict(src)
    own = model.state_dict()
    dropped = sorted(k for k in state if k not in own)
    if any(not _SIGMA.search(k) for k in dropped):
        raise ConfigError(f"init_from {src}: unexpected weight {next(k for k in dropped if not _SIGMA.search(k))}")
    if dropped:
        log.warning("init_from: %d σ-conditioning weights of %s dropped (this objective has none)", len(dropped), src)
    kept = sorted(k for k in own if k not in state)
    if any(not _SIGMA.search(k) for k in kept):
        raise ConfigError(f"init_from {src}: missing weight {next(k for k in kept if not _SIGMA.search(k))}")
    for k in kept:  # as the model initialised them: AdaLN-Zero and self-conditioning are zero
        state[k] = own[k]
    model.load_state_dict({k: v for k, v in state.items() if k in own})
    return kept
