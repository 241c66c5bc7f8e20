import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"

# the venv's tools first for every process the tests start, as `make` does: torch builds DeepSpeed's
# CPU op with the first `ninja` on PATH, and another ninja (the system's) would rebuild it (~1 min)
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs a worker per core: one thread each, for this process and the runs it
    # starts (two OpenMP teams on the same cores each run many times slower)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


# --- helpers shared by the test modules ---------------------------------------------------------

# the tiny model shape the unit tests build (ModelConfig(**TINY_MODEL))
TINY_MODEL = dict(
    vocab_size=50,
    hidden=32,
    heads=4,
    mlp_hidden=64,
    prelude_layers=1,
    core_layers=2,
    coda_layers=1,
    context=16,
    init_recurrence=4,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_rank_env() -> dict[str, str]:
    """A launcher's variables for a world of one in this process, on a free port."""
    return dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))


def forget_deepspeed_world() -> None:
    """DeepSpeed caches the world group of the first process group a process makes; a test
    that starts a new one after another test destroyed it (an in-process `main`) must drop it."""
    import deepspeed.utils.groups

    deepspeed.utils.groups._WORLD_GROUP = None


def train_here(args: list[str]) -> int:
    """`huginn-db train ARGS` in a world of one in this process (fast for tiny runs); its exit code."""
    from huginn_db.train import main

    forget_deepspeed_world()
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in one_rank_env().items():
            mp.setenv(k, v)
        try:
            return main(args)
        finally:
            torch.set_num_threads(threads)


def clean_env() -> dict[str, str]:
    """The environment minus a launcher's rank variables, for a child that starts its own world."""
    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}


def train_command(args: list[str], nproc: int = 1) -> list[str]:
    """`python -m huginn_db.train ARGS`, or the same module under DeepSpeed's launcher on nproc ranks."""
    if nproc == 1:
        return [sys.executable, "-m", "huginn_db.train", *args]
    return [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_accelerators",
        str(nproc),
        "--master_port",
        str(free_port()),
        "--module",
        "huginn_db.train",
        *args,
    ]


def metrics(run: Path) -> list[dict]:
    """A run's metrics.jsonl records."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def snapshot(root: Path):
    """Every file under root: (bytes, mtime), so an unchanged run compares equal."""
    if not root.exists():
        return None
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Shared datasets (CI: ../shared/data); tests that need them skip when absent."""
    root = Path(os.environ.get("HUGINN_DB_DATA", ROOT.parent / "shared" / "data"))
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set HUGINN_DB_DATA)")
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: a second OpenMP thread only adds synchronisation (10× slower on a busy CPU)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_addoption(parser):
    parser.addoption(
        "--regen-golden",
        action="store_true",
        default=False,
        help="rewrite tests/assets/losses/*.txt from this run instead of comparing (also: HUGINN_DB_REGEN_GOLDEN=1)",
    )


@pytest.fixture
def regen_golden(request) -> bool:
    """Whether golden files are to be rewritten rather than checked (tests/test_golden.py)."""
    return request.config.getoption("--regen-golden") or os.environ.get("HUGINN_DB_REGEN_GOLDEN", "") not in ("", "0")


WORDS = "the cat sat on a mat and saw 12 red dogs run far away from home today , . !".split()


@pytest.fixture(scope="module")
def spm_tok(tmp_path_factory):
    """A small SentencePiece model over WORDS (multi-line text needs more than the reasoning alphabet)."""
    from huginn_db.tokenizer import SentencePieceTokenizer, train_sentencepiece

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("spm") / "train.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS, 8)) for _ in range(2000)))
    return SentencePieceTokenizer(train_sentencepiece([str(path)], 300, str(path.parent)))


def _shares_a_module_fixture(item) -> bool:
    """Whether the test uses a module-scoped fixture of its own module (a trained run, a judge;
    not the autouse `_one_thread` helpers)."""
    defs = getattr(item, "_fixtureinfo", None)
    return defs is not None and any(
        d.scope == "module" and not d.argname.startswith("_") and d.baseid == item.nodeid.split("::")[0]
        for fixturedefs in defs.name2fixturedefs.values()
        for d in fixturedefs
    )


def pytest_collection_modifyitems(config, items):
    """The order `make test` hands out: xdist's worksteal gives each worker a contiguous share
    of it (the first worker the first share) and lets an idle worker take the back half of a
    busy one's queue. So the first share is the docs pages' commands (their checkout's set-up
    is then made once) filled up with fast tests; the others open with the tests that share a
    module-scoped fixture of their module, module by module (the fixture is made once: stealing
    takes from the back), then the other `slow` tests, then the fast ones."""
    docs, shared, slow, fast = [], [], [], []
    for item in items:
        if item.nodeid.startswith("tests/test_readme.py::test_every_command"):
            docs.append(item)
        elif _shares_a_module_fixture(item):
            shared.append(item)
        else:
            (slow if "slow" in item.keywords else fast).append(item)
    shared.sort(key=lambda i: "slow" not in i.keywords)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    fill = max(0, len(items) // workers - len(docs)) if workers > 1 else 0
    items[:] = docs + fast[:fill] + shared + slow + fast[fill:]
