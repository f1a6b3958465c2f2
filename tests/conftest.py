"""Shared test set-up: no network, a throwaway workspace, fixed seeds, few threads (CI has 2 cores)."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFER_STUDIO_WARM_UP", "0")  # no background feature warm-ups in unit tests
os.environ.setdefault("TRANSFER_STUDIO_MAX_JOBS", "1")  # one training slot, whatever the cores: tests say when more
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`make test` (`pytest -n 2 --dist loadgroup`): every browser test (tests/e2e/) in one process, in order, with
    one app server and one Chromium, as they were written; each other test goes wherever a process is free.

    pytest-xdist's own loadgroup marks a group by rewriting the test's node id, which pytest 9 no longer reads, so
    the scheduler here groups by folder instead.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class BrowserTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "e2e" if nodeid.startswith("tests/e2e/") else nodeid

    return BrowserTestsTogether(config, log)


@pytest.fixture(autouse=True)
def _isolated_workspace(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own workspace folder, so runs, caches and uploads never leak between tests."""
    home = tmp_path_factory.mktemp("workspace")
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def _seeded() -> None:
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def colour_dataset(tmp_path: Path):
    from tests.tiny import make_colour_dataset

    return make_colour_dataset(tmp_path / "colours")


@pytest.fixture
def tiny_backbone():
    from tests.tiny import TinyCNN

    return TinyCNN()


@pytest.fixture
def clean_jobs():
    """No training jobs before the test; leftover jobs cancelled after it (a worker process killed at once, a
    thread stopped within a batch), so none holds the machine's slot or its cores."""
    from core import jobs

    jobs.JOBS.clear()
    yield
    for job in jobs.all_jobs():
        job.cancel()
        job.join(10)
    jobs.JOBS.clear()
