"""The browser classroom benchmark (core.bench_browser), as a smoke test: two people in real browser sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import bench_browser

pytestmark = pytest.mark.e2e


def test_two_students_click_through_in_browsers_and_each_sees_only_their_own_run(tmp_path: Path) -> None:
    results = bench_browser.run(2, home=tmp_path / "workspace")
    assert results["failures"] == [] and results["finished"] == 2, results
    assert results["missing_run_ids"] == [] and results["own_runs_only"], results
    steps = results["by_step"]
    assert [steps[what]["n"] for what, _ in bench_browser.STEPS] == [2] * len(bench_browser.STEPS)
    assert results["clicks"] >= 2 * len(bench_browser.STEPS)
    assert results["busy_clicks"] >= 1  # the second student clicked while the first one's run trained
    assert 0 < results["click_to_idle_p50"] <= results["click_to_idle_p95"]
    assert results["click_to_model_p50"] > 0 and results["peak_memory_mib"]["one_worker"] > 0
    # the server's own time per page run, from its log: every click's page run is there, and some ran while
    # the other student's run trained
    assert results["server_page_runs"] >= 2 * len(bench_browser.STEPS)
    assert results["server_busy_page_runs"] >= 1
    assert 0 < results["server_page_run_p50"] <= results["server_page_run_p95"]
    # the app's answer at the browser's network: a page-run request for every click (at least), each ended by a page
    # run, some while the other student's run trained
    assert results["wire_answers"] >= 2 * len(bench_browser.STEPS) and results["wire_busy_answers"] >= 1
    assert 0 < results["wire_answer_p50"] <= results["wire_answer_p95"]
    table = bench_browser.markdown(results)
    assert "| The app's answer while others train: page-run request sent to page run ended" in table
    assert "| The server's own time per page run, all (n = " in table
    assert "| Runs finished | 2 of 2; failures: 0 |" in table
    assert "| Each browser names only its own runs | yes |" in table
