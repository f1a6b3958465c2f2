"""AppTest of the Train page with runs in real worker processes: Cancel next to Stop, and Resume for a run that
ended early, continuing from its last finished epoch."""

from __future__ import annotations

from core import _jobs_recover, jobs, workers
from tests.test_page_train import _app, _poll, _set, _state


def test_cancel_ends_the_worker_and_resume_finishes_the_run(colour_dataset, clean_jobs, monkeypatch):
    monkeypatch.setattr(workers, "DEFAULT_FIT", "tests.worker_engines:fit_tiny")  # the catalogue has no tiny CNN
    monkeypatch.setenv("TS_TEST_STEP_SECONDS", "0.2")
    at = _app(colour_dataset, frozen_groups=1)
    at.run()
    _set(at, "Epochs", 4)
    at.button[0].click().run()
    job = _state(at).job
    assert job.isolation == "process"
    assert _poll(at, lambda a: len(job.snapshot().epochs) >= 1 or not job.is_running, limit_seconds=120)
    assert job.is_running, job.error
    at.run()
    assert [b.label for b in at.button if b.key in ("train-stop", "train-cancel")] == ["⏹️ Stop training",
                                                                                      "🛑 Cancel"]
    at.button(key="train-cancel").click().run()
    assert not at.exception
    assert _poll(at, lambda a: not job.is_running, limit_seconds=30)
    at.run()
    assert job.status == jobs.CANCELLED
    assert any("Cancelled" in w.value for w in at.warning)

    monkeypatch.setenv("TS_TEST_STEP_SECONDS", "0")
    assert at.selectbox(key="train-resume-pick").value == job.job_id
    at.button(key="train-resume").click().run()
    assert not at.exception
    resumed = _state(at).job
    assert resumed is not job and resumed.run_dir == job.run_dir and resumed.resume
    assert _poll(at, lambda a: not resumed.is_running, limit_seconds=120)
    at.run()
    assert resumed.status == jobs.COMPLETED, resumed.error
    assert [m["epoch"] for m in resumed.snapshot().epochs] == [1, 2, 3, 4]
    assert _state(at).run_dir == job.run_dir  # the finished run is the model for step 5


def test_after_a_restart_a_fresh_session_resumes_its_interrupted_run_without_choosing_data_again(
        colour_dataset, clean_jobs, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from core.session import StudioState
    from tests.test_page_train import APP, PAGE
    from tests.test_workers import _in_epoch, _start_worker_without_a_server, _wait

    monkeypatch.setenv("TS_TEST_STEP_SECONDS", "0.3")
    run_dir = tmp_path / "run"
    worker = _start_worker_without_a_server(colour_dataset, run_dir, epochs=2)  # owned by "alice"
    assert _wait(lambda: _in_epoch(run_dir, 2))
    worker.kill()  # the server and its worker went down together
    monkeypatch.setenv("TS_TEST_STEP_SECONDS", "0")
    monkeypatch.setattr(_jobs_recover, "_RECOVERED", type(_jobs_recover._RECOVERED)())  # a fresh server process

    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page(PAGE)
    state = StudioState()
    state.owner = "alice"
    at.session_state["studio"] = state
    at.run()
    assert not at.exception
    assert any("needs an earlier one" in i.value for i in at.info)  # no data chosen in this session yet
    from core.store import RunStore

    interrupted = RunStore().list_runs(owner="alice")[0]  # the worker recorded its owner itself
    assert interrupted["status"] == "interrupted"
    assert at.selectbox(key="train-resume-pick").value == interrupted["run_id"]
    at.button(key="train-resume").click().run()
    job = _state(at).job
    assert job is not None and job.resume and _state(at).dataset.fingerprint == colour_dataset.fingerprint
    assert _poll(at, lambda a: not job.is_running, limit_seconds=120)
    assert job.status == jobs.COMPLETED, job.error
