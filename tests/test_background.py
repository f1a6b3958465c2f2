"""Tests of core.background: a task runs off the calling thread, reports progress, and keeps its result or error."""

from __future__ import annotations

import threading
from collections.abc import Callable

from core import background


def test_a_task_reports_progress_and_keeps_its_result_or_its_error() -> None:
    release = threading.Event()

    def work(progress: Callable[[float, str], None], stop_event: threading.Event) -> str:
        progress(0.5, "half way")
        release.wait(10)
        return "stopped" if stop_event.is_set() else "done"

    task = background.BackgroundTask(work, label="half").start()
    while task.snapshot().note != "half way":
        threading.Event().wait(0.01)
    snapshot = task.snapshot()
    assert (snapshot.status, snapshot.share) == (background.RUNNING, 0.5) and task.is_running
    task.stop()
    release.set()
    task.join(10)
    assert (task.snapshot().status, task.snapshot().result, task.snapshot().share) == (background.DONE, "stopped", 1.0)

    def broken(progress: Callable[[float, str], None], stop_event: threading.Event) -> None:
        raise KeyError("No backbone named 'x'.")

    failed = background.BackgroundTask(broken, label="broken").start()
    failed.join(10)
    assert (failed.snapshot().status, failed.snapshot().error) == (background.FAILED, "No backbone named 'x'.")
