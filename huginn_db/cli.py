"""`huginn-db` command line.

    huginn-db train RECIPE.yaml [dotted.key=value ...]   train one recipe (see huginn_db.train)
    huginn-db demo [dotted.key=value ...]                compare on the demo recipes (the main job)
    huginn-db eval RUN_OR_CKPT [--tasks T,..] [--num-steps 1,2,4] [lm-eval options]
    huginn-db compare RECIPE.yaml [--mode step|compute] [--seeds ...] [key=value ...]
                                                         train DB and BPTT, lm-eval both, report
    huginn-db report RUN_DIR [RUN_DIR ...]               rebuild report.md and plots from runs
    huginn-db audit RECIPE.yaml [key=value ...]          trivial predictors vs chance on its reasoning tasks
    huginn-db flops RECIPE.yaml [key=value ...] [--json]   analytic compute per step / token
    huginn-db peak [--json]                              this machine's matmul FLOP/s (MFU)
    huginn-db export RUN_DIR --out DIR                   consolidated safetensors + config
    huginn-db tokenizer train --input F... --vocab-size N --out DIR
"""
from __future__ import annotations

import sys
from pathlib import Path

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def _demo(overrides: list[str]) -> int:
    """The main job: DB vs BPTT on the depth benchmark (cups), step-matched, scored by lm-eval."""
    from huginn_db.compare import main_compare

    return main_compare([str(RECIPES / "demo-db.yaml"), "--num-steps", "1,2,4,8,16", "--limit", "100", *overrides])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        from huginn_db.train import main as train_main

        return train_main(rest)
    if cmd == "demo":
        return _demo(rest)
    if cmd == "eval":
        from huginn_db.lm_eval import main_eval

        return main_eval(rest)
    if cmd in ("compare", "report"):
        from huginn_db import compare

        return compare.main_compare(rest) if cmd == "compare" else compare.main_report(rest)
    if cmd == "audit":
        from huginn_db.data.audit import main as audit_main

        return audit_main(rest)
    if cmd in ("flops", "peak"):
        from huginn_db import compute

        return compute.main(rest) if cmd == "flops" else compute.main_peak(rest)
    if cmd == "export":
        from huginn_db.checkpoint import main as export_main

        return export_main(rest)
    if cmd == "tokenizer":
        from huginn_db.tokenizer import main as tokenizer_main

        return tokenizer_main(rest)
    print(f"huginn-db: error: unknown command {cmd!r} (try train, demo, eval, compare, report, audit, flops, peak, export, tokenizer)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
