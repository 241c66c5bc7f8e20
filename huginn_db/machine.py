"""Which machine made a run: CPU/GPU model, threads, library versions, the code's commit and the
date. fp32 rounding differs between CPU models (and kernels between GPUs), so trained numbers
move with the machine; every run directory keeps this record (machine.json) and every report
prints it, so a different number can be told from a regression."""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CAVEAT = (
    "fp32 rounding differs between CPU models (and kernels between GPUs), so trained numbers move "
    "across machines: compare runs made on one machine, or compare ratios"
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def commit() -> str | None:
    """HEAD of the checkout huginn_db runs from, "+dirty" with uncommitted changes to tracked
    files; None outside a git checkout (an installed wheel)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def describe(device=None, world: int = 1, step: int = 0) -> dict:
    """This process's machine; `device` a torch.device (its GPU model when CUDA), `step` the
    step a (resumed) run starts from."""
    import torch

    gpu = None
    if device is not None and torch.device(device).type == "cuda":
        gpu = torch.cuda.get_device_name(device)
    return {
        "from_step": step,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "gpu": gpu,
        "threads": torch.get_num_threads(),
        "world": world,
        "commit": commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepspeed": _version("deepspeed"),
        "lm_eval": _version("lm_eval"),
    }


def record(run: Path, entry: dict) -> None:
    """Append `entry` to run/machine.json (a list: a resumed run adds one per start), dropping
    any start at or past its step (a killed run's restart replaces what it logged)."""
    path = Path(run) / "machine.json"
    starts = json.loads(path.read_text()) if path.is_file() else []
    starts = [s for s in starts if s["from_step"] < entry["from_step"]] + [entry]
    path.write_text(json.dumps(starts, indent=1) + "\n")


def label(m: dict) -> str:
    """One line: CPU (or GPU) × threads × ranks, torch/DeepSpeed versions."""
    where = f"{m['gpu']} (host CPU {m['cpu']})" if m.get("gpu") else m["cpu"]
    return (
        f"{where}, {m['threads']} thread(s) × {m['world']} rank(s), torch {m['torch']}, "
        f"DeepSpeed {m.get('deepspeed') or '–'}, lm-eval {m.get('lm_eval') or '–'}"
    )


def section(runs: list[dict]) -> list[str]:
    """report.md's machine section from load_run records (each with "machine": its starts)."""
    lines = ["## Machine", ""]
    seen: dict[str, list[str]] = {}
    for d in runs:
        for m in d.get("machine") or []:
            seen.setdefault(label(m), []).append(Path(d["run"]).name)
    if not seen:
        lines.append("No run recorded its machine (machine.json, written since huginn_db records it).")
    for where, names in seen.items():
        lines.append(f"- {where}: {len(set(names))} run(s)")
    commits = sorted({m.get("commit") or "not a git checkout" for d in runs for m in d.get("machine") or []})
    dates = sorted({m["date"][:10] for d in runs for m in d.get("machine") or []})
    if commits:
        short = [c if c.startswith("not") else c[:12] + ("+dirty" if c.endswith("+dirty") else "") for c in commits]
        lines.append(f"- code: {', '.join(short)}")
        lines.append(f"- trained: {dates[0]}" + (f" to {dates[-1]}" if dates[-1] != dates[0] else ""))
    return lines + ["", CAVEAT + ".", ""]
