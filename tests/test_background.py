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


def test_a_task_started_once_is_found_again_and_not_started_twice() -> None:
    """What a reloaded page relies on: the running task under a key is found by a caller that did not start it,
    a second start while it runs returns it, and once it has ended the key is free for a new one."""
    release = threading.Event()
    starts: list[int] = []

    def work(progress: Callable[[float, str], None], stop_event: threading.Event) -> int:
        starts.append(1)
        release.wait(10)
        return len(starts)

    first = background.start_once("baselines:/runs/a", work, label="a")
    assert background.start_once("baselines:/runs/a", work, label="a") is first
    assert background.running("baselines:/runs/a") is first and background.running("baselines:/runs/b") is None
    release.set()
    first.join(10)
    assert background.running("baselines:/runs/a") is None, "an ended task is let go"
    again = background.start_once("baselines:/runs/a", work, label="a")
    again.join(10)
    assert again is not first and again.snapshot().result == 2
