"""Sweep the DiffusionBlocks training σ distribution on a recipe; prints a Markdown table.

    python eval/sweep_sigma.py recipes/demo-db.yaml --p-mean -1.2 0 1.5 2.5 [--seeds 0 1] [key=value ...]

Each point is a full `huginn-db train` run (its own run directory under --out); the table shows
final training loss and answer accuracy per difficulty at K = the recipe's num_bands.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--p-mean", type=float, nargs="+", default=[-1.2, 0.0, 1.5, 2.5])
    ap.add_argument("--p-std", type=float, default=None, help="keep the recipe's when unset")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--k", default="8", help="test-time iterations to show per difficulty")
    ap.add_argument("--out", default="runs/sigma-sweep")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()
    rows = []
    for pm in args.p_mean:
        for seed in args.seeds:
            run = Path(args.out) / f"pmean{pm:+.1f}-seed{seed}"
            ov = [f"objective.diffusion_blocks.p_mean={pm}", f"seed={seed}", f"run_dir={run}", "overwrite=true"]
            if args.p_std is not None:
                ov.append(f"objective.diffusion_blocks.p_std={args.p_std}")
            cmd = [sys.executable, "-m", "huginn_db.train", args.recipe, *ov, *args.overrides]
            print("==", " ".join(cmd[2:]), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            final = json.loads((run / "eval" / "final.json").read_text())
            rows.append((pm, seed, final["final_loss"], final["accuracy"]))
    K = args.k
    diffs = [d for d in rows[0][3][K] if d != "mean"]
    print(
        "\n| P_mean | seed | final loss | " + " | ".join(f"{d} (K={K})" for d in diffs) + f" | mean K=1 | mean K={K} |"
    )
    print("|---" * (5 + len(diffs)) + "|")
    for pm, seed, loss, acc in rows:
        a = acc[K]
        print(
            f"| {pm:+.1f} | {seed} | {loss:.4f} | "
            + " | ".join(f"{a[d]:.2f}" for d in diffs)
            + f" | {acc['1']['mean']:.3f} | {a['mean']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
