"""tests/unit/ checks one module at a time, in seconds; tests/integration/ runs whole trainings,
commands and benchmarks, and every test there is marked slow (`pytest -m "not slow"` skips them), as
are most cases of the unit engine-equivalence grids (tests/unit/engines/test_engines.py)."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # helpers.py, for both folders

INTEGRATION = Path(__file__).resolve().parent / "integration"


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """A run with `threads=N` sets torch's thread count for the process: it must not leak into the
    next test, whose float sums (and so its numbers) depend on it."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small synthetic dataset written as a sequences file (trains in seconds)."""
    from feddmmr.data.synthetic import make_synthetic

    log = make_synthetic(seed=1, num_users=60, num_items=150, median_length=25, min_length=8, max_length=60)
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    order = log.users.argsort(kind="stable")
    users, items = log.users[order], log.items[order]
    lines = []
    for user in dict.fromkeys(users.tolist()):
        lines.append(" ".join([str(user)] + [str(i) for i in items[users == user]]))
    path.write_text("\n".join(lines) + "\n")
    return path
