"""`huginn-db` command line: one dispatch table, one exit-code table (`huginn_db.errors`).

    huginn-db train RECIPE.yaml [dotted.key=value ...] [--print-config]   train one recipe
    huginn-db keys [SECTION]                             every recipe key: type, default, what it does
    huginn-db demo [dotted.key=value ...]                compare on the demo recipes (the main job)
    huginn-db eval RUN_OR_CKPT [--tasks T,..] [--num-steps 1,2,4] [lm-eval options]
    huginn-db compare RECIPE.yaml [--mode step|compute] [--objectives A B] [--seeds ...] [key=value ...]
                                                         train each objective, lm-eval each, report
    huginn-db report RUN_DIR [RUN_DIR ...]               rebuild report.md and plots from runs
    huginn-db audit RECIPE.yaml [key=value ...]          trivial predictors vs chance on its reasoning tasks
    huginn-db flops RECIPE.yaml [key=value ...] [--json] [--gpu NAME --mfu X [--gpus N]]
                                                         analytic compute per step / token; time and GPU-hours
    huginn-db peak [--json]                              this machine's matmul FLOP/s (MFU)
    huginn-db export RUN_DIR --out DIR [--format huginn]  consolidated safetensors + config (or Huginn's format)
    huginn-db import HUGINN_DIR --out DIR                a Huginn checkpoint as an export directory
    huginn-db tokenizer train --input F... --vocab-size N --out DIR
    huginn-db data prepare RECIPE.yaml [key=value ...] --out DIR [--num-proc N]
                                                         tokenize a text recipe's corpus once (data.text.prepared)
    huginn-db sample RUN --prompt TEXT | --judge DIR     sampled continuations; their MAUVE / gen-PPL
    huginn-db train-judge --input F... --out DIR         a GPT-2 judge LM (transformers) for sample quality

Flags of our own are spelled with dashes (--num-steps); lm-eval's flags keep lm-eval's spelling
(--num_fewshot, --output_path). Exit codes: 0 ok, 1 a check failed (audit, tokenizer
round-trip), 2 bad input, 3 non-finite training, 4 a checkpoint could not be written, 5 a
rank was lost.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from huginn_db.errors import guarded

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

# command → (module, function taking argv and returning an exit code); imported on use so that
# `huginn-db keys` does not pay for torch or DeepSpeed
COMMANDS = {
    "train": ("huginn_db.train", "command"),
    "keys": ("huginn_db.config", "keys_command"),
    "demo": ("huginn_db.cli", "demo"),
    "eval": ("huginn_db.lm_eval", "main_eval"),
    "compare": ("huginn_db.compare", "main_compare"),
    "report": ("huginn_db.compare", "main_report"),
    "audit": ("huginn_db.data.audit", "main"),
    "flops": ("huginn_db.flops", "main"),
    "peak": ("huginn_db.flops", "main_peak"),
    "export": ("huginn_db.interop", "main_export"),
    "import": ("huginn_db.interop", "main_import"),
    "tokenizer": ("huginn_db.tokenizer", "main"),
    "data": ("huginn_db.data", "main"),
    "sample": ("huginn_db.textgen", "main"),
    "train-judge": ("huginn_db.judge", "main"),
}


def demo(overrides: list[str]) -> int:
    """The main job: DB vs BPTT on the depth benchmark (cups), step-matched, scored by lm-eval."""
    from huginn_db.compare import main_compare

    # the two methods the project compares first; the study recipes train the rest
    return main_compare(
        [str(RECIPES / "demo-db.yaml"), "--objectives", "diffusion_blocks", "bptt"]
        + ["--num-steps", "1,2,4,8,16", "--limit", "100", *overrides]
    )


def run_command(name: str, argv: list[str]) -> int:
    """Run one command; a failure it raises becomes one line on stderr and its exit code."""
    module, func = COMMANDS[name]
    return guarded(getattr(importlib.import_module(module), func), argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"huginn-db: error: unknown command {argv[0]!r} (try {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    return run_command(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
