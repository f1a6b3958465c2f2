"""AppTest of several browsers on one server (issue 14.1-3): each Train click says whether it started or queued a
run; a fresh session gets back its own browser's job and runs after a refresh, and never another browser's.

Sessions go through the router (`app.py`), which gives each browser an id kept in the URL's query string; a
"refresh" is a new AppTest with the same query string.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import evaluation, jobs
from core.session import StudioState
from tests.test_page_train import tiny_fit  # noqa: F401 - a fixture, shared with the Train page's tests

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TRAIN, TEST = "pages/4_train.py", "pages/5_test.py"
ALICE, BOB = "a" * 32, "b" * 32


@pytest.fixture(autouse=True)
def _clean_registry(clean_jobs):
    """Every test here starts with no training jobs (see `clean_jobs` in conftest)."""


@pytest.fixture
def tiny_runs(request, monkeypatch):
    """Jobs train the tiny CNN with the real engine (`tiny_fit`); the Test page loads it without the catalogue."""
    from tests.test_evaluation import load_tiny_run

    request.getfixturevalue("tiny_fit")
    monkeypatch.setattr(evaluation, "load_model", load_tiny_run)


def _browser(owner: str | None, dataset=None) -> AppTest:
    """A new session of the browser `owner` (None: a browser never seen), through the router, on the Train page."""
    at = AppTest.from_file(APP, default_timeout=60)
    if owner is not None:
        at.query_params["browser"] = owner
    at.run()
    if dataset is not None:
        state: StudioState = at.session_state["studio"]
        state.dataset, state.backbone_name, state.frozen_groups = dataset, "tiny_cnn", 1
    return at.switch_page(TRAIN).run()


def _state(at: AppTest) -> StudioState:
    return at.session_state["studio"]


def _train(at: AppTest) -> jobs.TrainingJob:
    next(w for w in at.number_input if w.label == "Epochs").set_value(1)
    at.button(key="train-submit").click().run()
    assert not at.exception
    return _state(at).job


def _until_done(at: AppTest, job: jobs.TrainingJob) -> None:
    deadline = time.monotonic() + 60
    while job.is_running and time.monotonic() < deadline:
        time.sleep(0.2)
    at.run()  # the page adopts the finished run and reruns once
    at.run()
    assert job.status == "completed", job.error


def test_each_click_says_started_or_queued_and_a_new_browser_sees_nobody_elses_job(colour_dataset, monkeypatch):
    from tests.test_jobs import _FakeFit

    gate = threading.Event()
    fits = iter([_FakeFit(gate=gate), _FakeFit()])
    monkeypatch.setattr(jobs, "_default_fit", lambda: next(fits))
    alice, bob = _browser(ALICE, colour_dataset), _browser(BOB, colour_dataset)
    first, second = _train(alice), _train(bob)
    assert first.owner == ALICE and second.owner == BOB
    assert any(c.value.startswith("▶️ Started") for c in alice.caption)
    assert any(c.value.startswith("⏳ Queued at place 1") for c in bob.caption)

    newcomer = _browser(None)  # a third browser opens the Train page while both jobs are on the server
    assert not newcomer.exception
    assert _state(newcomer).job is None and _state(newcomer).dataset is None
    assert "earlier one" in newcomer.info[0].value and not newcomer.button
    assert _state(newcomer).owner not in (ALICE, BOB)
    assert newcomer.query_params["browser"] == _state(newcomer).owner  # kept in the URL for the next refresh

    bob_again = _browser(BOB)  # Bob refreshes: his own queued job, not Alice's running one
    assert _state(bob_again).job is second and _state(bob_again).dataset is colour_dataset
    gate.set()
    assert first.join(10) and second.join(10)


def test_after_a_refresh_all_of_your_runs_are_listed_and_testable(colour_dataset, tiny_runs):
    alice = _browser(ALICE, colour_dataset)
    older = _train(alice)
    _until_done(alice, older)
    newer = _train(alice)
    _until_done(alice, newer)
    bob = _browser(BOB, colour_dataset)
    bobs = _train(bob)  # the newest run on the server is Bob's
    _until_done(bob, bobs)

    refreshed = _browser(ALICE)
    assert not refreshed.exception
    assert any("Reattached" in i.value for i in refreshed.info)
    assert _state(refreshed).job is newer
    table = refreshed.dataframe[0].value
    assert list(table["run"]) == [newer.job_id, older.job_id]
    assert refreshed.selectbox(key="train-pick-2").options == [newer.job_id, older.job_id]

    refreshed.switch_page(TEST).run()
    assert not refreshed.exception
    picker = next(s for s in refreshed.selectbox if s.label == "Run to test")
    assert len(picker.options) == 2 and picker.value == newer.run_dir
    picker.set_value(older.run_dir).run()
    assert not refreshed.exception
    assert _state(refreshed).run_dir == older.run_dir
    assert bobs.run_dir not in _state(refreshed).runs
