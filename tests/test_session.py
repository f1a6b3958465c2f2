"""A fresh session (a refresh, a reopened tab, another computer with the code) gets back its own workspace's job and
runs, and nobody else's."""

from __future__ import annotations

import pytest

from core import jobs
from core.session import StudioState, open_workspace, restore


@pytest.fixture(autouse=True)
def _clean_registry(clean_jobs):
    """Every test here starts with no training jobs (see `clean_jobs` in conftest)."""


def _train(dataset, owner: str) -> jobs.TrainingJob:
    from core.training import TrainConfig
    from tests.tiny import TinyCNN

    config = TrainConfig(backbone="tiny_cnn", frozen_groups=1, epochs=1, batch_size=8, pretrained=False,
                         precision="fp32")
    job = jobs.TrainingJob(dataset, config, backbone=TinyCNN(), owner=owner).start()
    assert job.join(60) and job.status == jobs.COMPLETED, job.error
    return job


def test_a_refreshed_session_gets_all_its_own_runs_and_none_of_another_browsers(colour_dataset):
    first, second = _train(colour_dataset, "alice"), _train(colour_dataset, "alice")
    bobs = _train(colour_dataset, "bob")  # the newest job on the server is someone else's

    state = StudioState()
    assert restore(state, "alice")
    assert state.owner == "alice" and state.job is second
    assert state.dataset is colour_dataset and state.backbone_name == "tiny_cnn" and state.frozen_groups == 1
    assert state.runs == [first.run_dir, second.run_dir] and state.run_dir == second.run_dir
    assert state.scratch["train_run_dirs"] == [first.run_dir, second.run_dir]
    assert bobs.run_dir not in state.runs


def test_a_new_browser_starts_empty_while_others_train(colour_dataset):
    _train(colour_dataset, "alice")
    state = StudioState()
    assert not restore(state, "carol")
    assert state.owner == "carol"
    assert state.job is None and state.dataset is None and state.runs == [] and state.run_dir is None


def test_entering_another_workspace_by_its_code_gives_that_workspaces_work(colour_dataset):
    alices = _train(colour_dataset, "alice")
    _train(colour_dataset, "bob")
    state = open_workspace("alice")  # Bob typed Alice's code: a fresh session in her workspace
    assert state.owner == "alice" and state.job is alices and state.runs == [alices.run_dir]
    assert state.scratch["train_reattached"] == alices.job_id
    assert open_workspace("nobody-yet").runs == []
