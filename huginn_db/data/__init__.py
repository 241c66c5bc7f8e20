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
