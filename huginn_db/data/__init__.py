"""Training data: the depth benchmark's reasoning families (default) and text corpora through `datasets`."""

from __future__ import annotations

from huginn_db.errors import ConfigError


def build_corpus(data_cfg, seed: int, context: int):
    """The corpus a recipe's `data:` section names (data_cfg: DataConfig); bad data or a model
    context too short for the longest example is a ConfigError."""
    if data_cfg.name == "text":
        from huginn_db.data.text import TextCorpus

        try:
            return TextCorpus(data_cfg.text, seed)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(str(err)) from None
    from huginn_db.data.reasoning import ReasoningCorpus

    try:
        corpus = ReasoningCorpus(data_cfg.reasoning, seed)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    need = corpus.max_length(data_cfg.reasoning.test_difficulties)
    if need > context:
        raise ConfigError(
            f"model.context={context} is shorter than the longest reasoning example ({need} tokens); "
            f"raise model.context"
        )
    return corpus


def main(argv: list[str]) -> int:
    """`huginn-db data prepare RECIPE [dotted.key=value ...] --out DIR [--num-proc N]`."""
    import argparse
    import json
    import os
    from pathlib import Path

    from huginn_db.config import load_config
    from huginn_db.data.prepared import prepare

    ap = argparse.ArgumentParser(
        prog="huginn-db data",
        description="Tokenize a recipe's data.text sources once into a prepared set (train with data.text.prepared=DIR).",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("prepare", help="tokenize data.text's sources in parallel into DIR")
    pp.add_argument("recipe")
    pp.add_argument("overrides", nargs="*", metavar="key=value")
    pp.add_argument("--out", required=True, type=Path)
    pp.add_argument(
        "--num-proc", type=int, default=os.cpu_count() or 1, help="tokenizer processes (default: all cores)"
    )
    pp.add_argument("--shard-docs", type=int, default=2048, help="documents per restartable shard")
    args = ap.parse_args(argv)
    cfg = load_config(args.recipe, args.overrides)
    if cfg.data.name != "text":
        raise ConfigError(f"data prepare: {args.recipe} trains on data.name={cfg.data.name}, not text")
    if args.num_proc < 1 or args.shard_docs < 1:
        raise ConfigError("data prepare: --num-proc and --shard-docs must be >= 1")
    text = cfg.data.text
    seed = cfg.seed if text.split_seed is None else text.split_seed
    try:
        manifest = prepare(text, seed, args.out, args.num_proc, args.shard_docs)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from None
    splits = manifest["splits"]
    print(
        f"{args.out}: train {splits['train']['tokens']:,} tokens in {splits['train']['documents']:,} documents, "
        f"val {splits['val']['tokens']:,} in {splits['val']['documents']:,} ({manifest['dtype']}), "
        f"{manifest['seconds']:.1f}s; train with data.text.prepared={args.out}"
    )
    print(json.dumps({k: manifest[k] for k in ("tokenizer", "split")}))
    return 0
