"""The objective registry: every way to train the looped model, behind one interface.

An objective is one module in this package whose class subclasses `Objective` (base.py) and is
decorated with `@register`; it is found by importing the package (modules elsewhere: list them
in $HUGINN_DB_OBJECTIVES). Everything else — config
sections (`objective.<name>`), FLOP and memory accounting, compare, bench, lm-eval — reads this
registry, so adding an objective touches its own file (and its tests) only.

    objective.loss(model, batch, step, slot) -> (loss, stats)   one training micro-step
    objective.logits(model, ids, num_steps)  -> logits          inference at a chosen depth
    objective.noise(model, B, T, generator)  -> (B, T, h)       the per-position random draw
    generate(objective, model, ids, ...)     -> new token ids   greedy or sampled decoding (KV cache)
"""

from __future__ import annotations

import importlib
import os
import pkgutil

from huginn_db.objectives.base import Objective
from huginn_db.objectives.registry import OBJECTIVES, build_objective, for_config, get, register

# each objective module registers itself on import: this package's, then any named in
# $HUGINN_DB_OBJECTIVES (comma-separated module paths: objectives kept outside the repo)
for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _mod not in ("base", "decoding", "registry") and not _mod.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod}")
for _mod in filter(None, (m.strip() for m in os.environ.get("HUGINN_DB_OBJECTIVES", "").split(","))):
    importlib.import_module(_mod)

from huginn_db.objectives.decoding import Sampling, generate, next_tokens  # noqa: E402

__all__ = [
    "OBJECTIVES",
    "Objective",
    "Sampling",
    "build_objective",
    "for_config",
    "generate",
    "get",
    "next_tokens",
    "register",
]
