"""`huginn-db` command line.

    huginn-db train RECIPE.yaml [dotted.key=value ...]   train one recipe (see huginn_db.train)
    huginn-db demo [dotted.key=value ...]                train demo-db and demo-bptt, print both
    huginn-db compare RECIPE.yaml [--mode step|compute] [--seeds ...] [key=value ...]
                                                         train DB and BPTT, lm-eval both, report
    huginn-db report RUN_DIR [RUN_DIR ...]               rebuild report.md and plots from runs
    huginn-db export RUN_DIR --out DIR                   consolidated safetensors + config
    huginn-db tokenizer train --input F... --vocab-size N --out DIR
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def _demo(overrides: list[str]) -> int:
    """Trains both demo recipes (each in its own process: one DeepSpeed world per run)."""
    results = {}
    for name in ("db", "bptt"):
        cmd = [sys.executable, "-m", "huginn_db.train", str(RECIPES / f"demo-{name}.yaml"), "overwrite=true", *overrides]
        print(f"== {' '.join(cmd[1:])}", flush=True)
        rc = subprocess.call(cmd, env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")})
        if rc:
            return rc
        from huginn_db.config import load_config

        run = Path(load_config(RECIPES / f"demo-{name}.yaml", overrides).run_dir)
        results[name] = json.loads((run / "eval" / "final.json").read_text())
    from huginn_db.evaluate import format_accuracy_table

    print("\n== DiffusionBlocks vs truncated BPTT (same model, data, steps)")
    for name, r in results.items():
        print(f"\n{r['objective']}: final loss {r['final_loss']:.4f}, {r['steps']} steps, "
              f"{r['train_seconds']:.0f}s training; answer accuracy by test-time iterations:")
        print(format_accuracy_table(r["accuracy"]))
    return 0


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
    if cmd in ("compare", "report"):
        from huginn_db import compare

        return compare.main_compare(rest) if cmd == "compare" else compare.main_report(rest)
    if cmd == "export":
        from huginn_db.checkpoint import main as export_main

        return export_main(rest)
    if cmd == "tokenizer":
        from huginn_db.tokenizer import main as tokenizer_main

        return tokenizer_main(rest)
    print(f"huginn-db: error: unknown command {cmd!r} (try train, demo, compare, report, export, tokenizer)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
