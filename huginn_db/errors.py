"""The ways a command can fail, and the exit code the CLI gives each (docs/reliability.md, "When things go
wrong"). Every command raises these; only `huginn_db.cli` turns them into a one-line message
and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable


class ConfigError(ValueError):
    """Bad input before any work starts: a recipe, override, data, tokenizer or task problem."""


class NonFinite(RuntimeError):
    """A non-finite loss or gradient past train.skip_nonfinite: the run stops before the update."""


class CheckpointError(RuntimeError):
    """No usable checkpoint to read, or one could not be written."""


class RankFailure(RuntimeError):
    """A collective failed: another rank died or did not answer within train.dist_timeout."""


EXIT_CODES: dict[type[BaseException], int] = {ConfigError: 2, NonFinite: 3, CheckpointError: 4, RankFailure: 5}


def guarded(command: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run a command; a failure it raises becomes one line on stderr and its exit code."""
    try:
        return command(list(argv))
    except tuple(EXIT_CODES) as err:
        print(f"huginn-db: error: {err}", file=sys.stderr)
        return next(code for cls, code in EXIT_CODES.items() if isinstance(err, cls))
