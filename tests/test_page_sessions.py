"""AppTest of several browsers on one server (issues 14.1-3, 10.3): each Train click says whether it started or
queued a run; a fresh session gets back its own workspace's job and runs after a refresh, and never another's;
joining a workspace by its code shows that workspace's runs, and an operator's team workspace holds everyone.

Sessions go through the router (`app.py`), which puts each browser in a workspace named in the URL's query string;
a "refresh" is a new AppTest with the same query string.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import _jobs_job, evaluation, jobs
from core.session import StudioState
from tests.test_page_train import tiny_fit  # noqa: F401 - a fixture, shared with the Train page's tests

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TRAIN, TEST = "pages/4_train.py", "pages/5_evaluate.py"
ALICE, BOB = "amber-otter-11", "teal-heron-22"


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
    """A new session in the workspace `owner` (None: a browser never seen), through the router, on the Train page."""
    at = AppTest.from_file(APP, default_timeout=60)
    if owner is not None:
        at.query_params["workspace"] = owner
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
    monkeypatch.setattr(_jobs_job, "_default_fit", lambda: next(fits))
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
    assert newcomer.query_params["workspace"] == _state(newcomer).owner  # kept in the URL for the next refresh

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


def test_two_workspaces_see_only_their_own_runs_and_joining_by_code_shows_the_others(colour_dataset, tiny_runs):
    alice = _browser(ALICE, colour_dataset)
    alices = _train(alice)
    _until_done(alice, alices)
    bob = _browser(BOB, colour_dataset)
    bobs = _train(bob)
    _until_done(bob, bobs)
    assert Path(alices.run_dir).parent.parent.name == ALICE and Path(bobs.run_dir).parent.parent.name == BOB

    bob = _browser(BOB)  # a refresh: Bob's run, not Alice's
    assert _state(bob).runs == [bobs.run_dir]
    assert list(bob.dataframe[0].value["run"]) == [bobs.job_id]

    _state(bob).run_dir = alices.run_dir  # a run folder of another workspace, however it got here
    bob.switch_page(TEST).run()
    assert any("belongs to another workspace" in e.value for e in bob.error)

    # Bob, on another computer, opens Alice's workspace by its code (in the link's ?workspace=, as the sidebar's
    # Join box puts it there; AppTest reruns only the page of a navigation app, so the click itself is in the e2e test)
    joiner = _router(ALICE)
    joined = _state(joiner)
    assert joined.owner == ALICE and joiner.query_params["workspace"] == ALICE
    assert joined.runs == [alices.run_dir] and bobs.run_dir not in joined.scratch["train_run_dirs"]
    assert any(f"`{ALICE}`" in m.value for m in joiner.sidebar.markdown)  # the code, to note or to give to a team
    assert joiner.sidebar.text_input(key="workspace-code")  # and a box to type another's


def _router(owner: str | None) -> AppTest:
    """A new session through the router only (its sidebar shows the workspace's code and the Join box)."""
    at = AppTest.from_file(APP, default_timeout=60)
    if owner is not None:
        at.query_params["workspace"] = owner
    return at.run()


def test_an_operators_team_workspace_holds_every_browser(monkeypatch):
    monkeypatch.setenv("TRANSFER_STUDIO_WORKSPACE", "team-vision")
    first, second = _router(None), _router(BOB)
    assert _state(first).owner == _state(second).owner == "team-vision"
    assert second.query_params["workspace"] == "team-vision"
    assert any("Shared by everyone" in c.value for c in second.sidebar.caption)
    assert not second.sidebar.text_input  # no joining another: the operator decided
