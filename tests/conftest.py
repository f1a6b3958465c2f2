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
