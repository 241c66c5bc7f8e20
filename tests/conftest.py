import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
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
    parser.addoption("--regen-golden", action="store_true", default=False,
                     help="rewrite tests/assets/losses/*.txt from this run instead of comparing (also: HUGINN_DB_REGEN_GOLDEN=1)")


@pytest.fixture
def regen_golden(request) -> bool:
    """Whether golden files are to be rewritten rather than checked (tests/test_golden.py)."""
    return request.config.getoption("--regen-golden") or os.environ.get("HUGINN_DB_REGEN_GOLDEN", "") not in ("", "0")
