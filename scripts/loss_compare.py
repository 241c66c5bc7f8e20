"""Compare a run's per-step loss with a golden loss curve (tests/assets/losses/*.txt).

    python scripts/loss_compare.py RUN_DIR tests/assets/losses/bptt.txt [--assert-equal] [--rtol 1e-5]
    python scripts/loss_compare.py RUN_DIR tests/assets/losses/bptt.txt --write   # replace the golden

A golden file holds one `step loss` pair per line, the loss as Python's full float repr.
Prints step, both losses and their relative difference; --assert-equal exits 1 on any step
past --rtol (or a differing set of steps).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

RTOL = 1e-5


def run_losses(run_dir: str | Path) -> dict[int, float]:
    """step -> logged training loss, from RUN_DIR/metrics.jsonl (evaluation records skipped)."""
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return {int(r["step"]): float(r["loss"]) for r in rows if r.get("loss") is not None}


def read_golden(path: str | Path) -> dict[int, float]:
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            step, loss = line.split()
            out[int(step)] = float(loss)
    return out


def write_golden(path: str | Path, losses: dict[int, float]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(f"{s} {losses[s]!r}\n" for s in sorted(losses)))


def mismatches(actual: dict[int, float], golden: dict[int, float], rtol: float = RTOL) -> list[str]:
    """One line per disagreement; empty when the curves match."""
    if sorted(actual) != sorted(golden):
        return [f"steps differ: run has {sorted(actual)}, golden has {sorted(golden)}"]
    return [
        f"step {s}: run {actual[s]!r} golden {golden[s]!r} (rel diff {rel(actual[s], golden[s]):.2e} > {rtol:g})"
        for s in sorted(golden)
        if not math.isclose(actual[s], golden[s], rel_tol=rtol, abs_tol=0.0)
    ]


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("golden")
    p.add_argument("--assert-equal", action="store_true", help="exit 1 unless every step is within --rtol")
    p.add_argument("--rtol", type=float, default=RTOL)
    p.add_argument("--write", action="store_true", help="write the run's curve to GOLDEN instead of comparing")
    args = p.parse_args(argv)
    actual = run_losses(args.run_dir)
    if args.write:
        write_golden(args.golden, actual)
        print(f"wrote {len(actual)} steps to {args.golden}")
        return 0
    golden = read_golden(args.golden)
    print(f"{'step':>5} {'run':>22} {'golden':>22} {'rel diff':>9}")
    for s in sorted(set(actual) | set(golden)):
        a, g = actual.get(s), golden.get(s)
        d = f"{rel(a, g):9.2e}" if a is not None and g is not None else "        -"
        print(f"{s:>5} {a!r:>22} {g!r:>22} {d}")
    bad = mismatches(actual, golden, args.rtol)
    print(f"{len(bad)} mismatch(es) at rtol {args.rtol:g}" if bad else f"match at rtol {args.rtol:g}")
    return 1 if bad and args.assert_equal else 0


if __name__ == "__main__":
    sys.exit(main())
