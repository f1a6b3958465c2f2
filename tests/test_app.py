"""The router: five steps in order, the sidebar summary, and the start-up clean-up of abandoned runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.store import RunStore

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def test_app_opens_on_the_data_step_with_an_empty_summary() -> None:
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "1 · Data"
    summary = " ".join(m.value for m in at.sidebar.markdown)
    assert "Data: not loaded yet" in summary and "Train: no model yet" in summary


def test_page_runs_are_logged_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "page_runs.jsonl"
    monkeypatch.delenv("TRANSFER_STUDIO_RUN_LOG", raising=False)
    AppTest.from_file(APP, default_timeout=60).run()
    assert not log.exists()
    monkeypatch.setenv("TRANSFER_STUDIO_RUN_LOG", str(log))
    AppTest.from_file(APP, default_timeout=60).run()
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [run["page"] for run in runs] == ["1 · Data"]
    assert runs[0]["seconds"] > 0 and runs[0]["at"] > 0


def test_runs_left_running_by_a_dead_process_are_marked_failed_at_start() -> None:
    store = RunStore()
    run_id = store.create_run(backbone="tiny_cnn", modality="image", dataset_name="d", dataset_fingerprint="f",
                              frozen_groups=0, config={}, classes=["a", "b"])
    store._connection().execute("UPDATE runs SET pid = ? WHERE run_id = ?", (2**22 + 12345, run_id))
    store._connection().commit()
    AppTest.from_file(APP, default_timeout=60).run()
    assert store.get_run(run_id)["status"] == "failed"
