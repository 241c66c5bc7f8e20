"""Every shell command in the code blocks of the README and the docs pages runs as written, on a fresh copy of the
checkout (the tracked files only, no runs/), with tiny settings.

The only changes made to a README command are the SUBSTITUTIONS below and the TINY overrides put
after the recipe of every command that trains; a command runs in README order, except that the
ones in FIRST (the commands that produce what the examples read: the demo runs, the text model,
the Huginn-format export) run before the rest. The launchers that need a cluster (hostfile,
SLURM) run against stub `deepspeed` / `srun` / `scontrol` / `sbatch` commands that check the
script with `bash -n` and hand the trainer its arguments with --print-config: their argument
parsing is tested, not a cluster. `make TARGET` runs as `make -n TARGET` (its recipe resolves)
except `make demo`, which is the demo's command at tiny settings.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, clean_env

pytestmark = pytest.mark.slow

TINY = [  # after the recipe of every command that trains (later overrides win)
    "model.hidden=64",
    "model.mlp_hidden=128",
    "train.max_steps=2",
    "train.warmup_steps=1",
    "train.micro_batch_size=4",
    "train.log_every=1",
    "train.threads=1",
    "data.reasoning.test_examples=4",
]
SUBSTITUTIONS = [  # (pattern, replacement), applied in order to every command
    (r"^make demo\b.*", "huginn-db demo --limit 2 --num-steps 1,2"),
    (r"^make (\S+).*", r"make -n \1"),
    (r"--seeds( \d+)+", "--seeds 0"),
    (r"--limit \d+", "--limit 2"),
    (r" --flops \S+", ""),  # a study's budget would be thousands of tiny steps: take the recipe's
    (r"--num-steps 32\b", "--num-steps 4"),
    (r"(huginn-db compare .*)", r"\1 --limit 2 --judge-steps 2 --prompts 8 --per-prompt 1 --new-tokens 4"),
    (r"(huginn-db sample .*--judge .*)", r"\1 --prompts 8 --per-prompt 1 --new-tokens 4"),
    (r"(huginn-db sample .*--prompt .*)", r"\1 --num-steps 2"),
    (r"(huginn-db train-judge .*)", r"\1 --steps 2 --batch-size 2 --context 64"),
    (r"path/to/huginn-0125", "runs/huginn-format"),  # the Huginn-format export made in FIRST
    (r"gsm8k_local", "reasoning_cups"),  # that export has the demo's tokenizer, which cannot read GSM8K
    (r"\bRUN_DIR\b", "runs/golden-bptt"),
    (r"\bRUN\b", "runs/text-small/db"),
    (r" \[--quick\] \[--gpu\]", " --quick"),
    (r"\.\./shared/data", "{data}"),
    # the checkout's .venv links to this venv, but a python started by that path has another
    # sys.prefix, so DeepSpeed's JIT op (keyed by its source path) would rebuild (~30 s of both
    # cores) there and again in the next process started by the venv's own path
    (r"(^|&& )\.venv/bin/python\b", r"\1{python}"),
]
FIRST = [  # README commands (by prefix) that produce what the others read, in this order
    "make demo",
    "huginn-db tokenizer train",
    "HUGINN_DB_DATA=../shared/data huginn-db train recipes/text-small-db.yaml",
    "huginn-db export runs/demo/bptt-seed0",
]
EXTRA = {  # not README commands, run as written: inputs a README example names as a placeholder
    "runs/golden-bptt": "huginn-db train tests/assets/golden.yaml objective.name=bptt run_dir=runs/golden-bptt",
}
TRAINS = re.compile(r"huginn-db (train|compare|demo)\b|huginn_db\.train\b|recipes/launch/|sbatch ")
STUBS = {  # cluster launchers: check the script, parse the trainer's arguments, run nothing
    "deepspeed": """#!/usr/bin/env bash
echo "deepspeed $*" >> "$STUB_LOG"
while [ $# -gt 0 ] && [ "$1" != --module ]; do shift; done
shift 2
exec python -m huginn_db.train "$@" --print-config > /dev/null
""",
    "sbatch": """#!/usr/bin/env bash
echo "sbatch $*" >> "$STUB_LOG"
while [ $# -gt 0 ] && [ "${1#--}" != "$1" ]; do shift; done
bash -n "$1"
SLURM_JOB_NODELIST=node-001 SLURM_NTASKS=1 SLURM_PROCID=0 SLURM_LOCALID=0 exec bash "$@" --print-config
""",
    "scontrol": '#!/usr/bin/env bash\necho "${@: -1}"\n',
    "srun": """#!/usr/bin/env bash
echo "srun $*" >> "$STUB_LOG"
while [ $# -gt 0 ] && [ "${1#--}" != "$1" ]; do shift; done
exec "$@" > /dev/null
""",
}


def pages() -> list[Path]:
    """The README, then every docs page (docs/**/*.md but the generated study reports)."""
    docs = sorted(p for p in (ROOT / "docs").rglob("*.md") if p.name != "report.md")
    return [ROOT / "README.md", *docs]


def page_commands() -> dict[str, list[str]]:
    """{page relative to the repo: its bash blocks' commands}, continuation lines joined,
    comments dropped; a command that an earlier page already has is left to that page."""
    seen, out = set(), {}
    for page in pages():
        cmds = []
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = re.sub(r"\s+#.*$", "", line).strip()
                if line and not line.startswith("#") and line not in seen:
                    seen.add(line)
                    cmds.append(line)
        out[page.relative_to(ROOT).as_posix()] = cmds
    return out


def readme_commands() -> list[str]:
    """Every page's commands, in page order, once each."""
    return [c for cmds in page_commands().values() for c in cmds]


def tiny(cmd: str, data: str) -> str:
    for pattern, repl in SUBSTITUTIONS:
        cmd = re.sub(pattern, repl.replace("{data}", data).replace("{python}", sys.executable), cmd)
    if TRAINS.search(cmd):
        words = shlex.split(cmd)
        at = next((i for i, w in enumerate(words) if w.endswith(".yaml")), None)
        if at is not None:  # after the recipe and the README's own overrides
            at = max([at] + [i for i, w in enumerate(words) if re.match(r"[a-z_]+\.[\w.]+=", w)])
            if "recipes/launch/" in cmd and words[at + 1 : at + 2] and words[at + 1].isdigit():
                at += 1  # a launcher's NPROC comes right after its recipe
            words[at + 1 : at + 1] = TINY
        elif words[:2] == ["huginn-db", "demo"]:
            words += TINY
        cmd = shlex.join(words)
    return cmd


def test_every_readme_command_is_found_and_ordered():
    commands = readme_commands()
    # every page with a shell block contributes (a page the glob missed would go untested)
    assert {p.name for p in pages()} >= {"README.md", "training.md", "scale-out.md", "evaluation.md"}
    assert len(commands) >= 30
    assert all(any(c.startswith(p) for c in commands) for p in FIRST)  # FIRST names README commands
    assert "make test" in commands and any(c.startswith("huginn-db eval") for c in commands)
    readme = page_commands()["README.md"]
    assert readme[:2] == ["make demo", "make test"]  # the two set-up commands come first
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250  # the rest lives in docs/
    assert tiny("make study", "/d") == "make -n study"
    assert tiny(".venv/bin/python -m pytest", "/d") == f"{sys.executable} -m pytest"  # not the checkout's link
    t = tiny("huginn-db train recipes/demo-db.yaml train.max_steps=200 run_dir=runs/mine", "/d").split()
    assert t.index("train.max_steps=2") > t.index("train.max_steps=200")  # later override wins
    t = tiny("recipes/launch/single-node.sh recipes/paper-lm1b-db.yaml 8", "/d").split()
    assert t[:3] == ["recipes/launch/single-node.sh", "recipes/paper-lm1b-db.yaml", "8"] and "train.max_steps=2" in t


def first_commands() -> list[str]:
    commands = readme_commands()
    return [next(c for c in commands if c.startswith(p)) for p in FIRST]


def run_line(line: str, repo: Path, env: dict, stub_env: dict) -> str | None:
    """Run one (tiny) command in the checkout; None, or what failed."""
    cluster = "recipes/launch/" in line or line.startswith("sbatch")
    if cluster:
        script = next(w for w in shlex.split(line) if w.startswith("recipes/launch/"))
        subprocess.run(["bash", "-n", script], cwd=repo, check=True)
    proc = subprocess.run(
        ["bash", "-c", line], cwd=repo, env=stub_env if cluster else env, capture_output=True, text=True, timeout=900
    )
    return None if proc.returncode == 0 else f"({proc.returncode}) ran as:\n  {line}\n{proc.stderr[-2000:]}"


@pytest.fixture(scope="session")
def checkout(tmp_path_factory, data_root):
    """A fresh copy of the tracked files with the stub launchers, after the commands every page
    reads from (FIRST, then EXTRA): made once per test process."""
    tmp = tmp_path_factory.mktemp("readme")
    repo = tmp / "checkout"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in files.stdout.split("\0"):
        if name and (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    (repo / ".venv").symlink_to(Path(sys.executable).parents[1])  # the README's .venv/bin/python
    stubs = tmp / "stubs"
    stubs.mkdir()
    for name, body in STUBS.items():
        (stubs / name).write_text(body)
        (stubs / name).chmod(0o755)
    env = clean_env()  # the venv's bin is already first on PATH (tests/conftest.py)
    env.update(HUGINN_DB_DATA=str(data_root), STUB_LOG=str(tmp / "stubs.log"), OMP_NUM_THREADS="1")
    stub_env = {**env, "PATH": str(stubs) + os.pathsep + env["PATH"]}
    for cmd in SET_UP + list(EXTRA.values()):
        line = cmd if cmd in EXTRA.values() else tiny(cmd, str(data_root))
        failed = run_line(line, repo, env, stub_env)
        assert failed is None, f"the set-up command {cmd} failed: {failed}"
    return repo, env, stub_env, tmp / "stubs.log"


SET_UP = first_commands()  # read from the pages once
PAGES = {page: cmds for page, cmds in page_commands().items() if [c for c in cmds if c not in SET_UP]}


@pytest.mark.parametrize("page", list(PAGES))
def test_every_command_of_the_page_runs(page, checkout, data_root):
    """A page's commands in its order, after the shared set-up; every failure is reported."""
    repo, env, stub_env, stub_log = checkout
    failed = []
    for cmd in PAGES[page]:
        if cmd in SET_UP:
            continue
        if (problem := run_line(tiny(cmd, str(data_root)), repo, env, stub_env)) is not None:
            failed.append(f"{cmd}\n{problem}")
    assert not failed, f"{len(failed)} command(s) of {page} failed:\n\n" + "\n\n".join(failed)
    if page == "docs/scale-out.md":  # the launchers handed their arguments on as documented
        log = stub_log.read_text()
        assert "--num_accelerators 8" in log and "--hostfile recipes/launch/hostfile --master_addr node-001" in log
        assert re.search(
            r"srun --kill-on-bad-exit=1 bash -c .*huginn_db\.train", log, re.S
        )  # the -c script spans lines


def test_every_relative_link_of_the_pages_resolves():
    """Links between the README and the docs pages (and their figures) point at files that exist."""
    broken = []
    for page in pages() + sorted((ROOT / "docs").rglob("report.md")):
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#")[0]
            if path and not re.match(r"[a-z]+://", path) and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
