"""Short pieces of long work (a few baselines, seconds to minutes) on a thread of their own, so a page stays usable.

Training a run needs a worker process, a queue and recovery after a restart (`core.jobs`); a baseline does not: it
is redone with one click. A `BackgroundTask` runs one function on a daemon thread, hands it a `progress(share,
note)` callback and a stop event, and keeps what a page polls (`snapshot()`) behind a lock. Pages keep the task in
their session and poll it from `@st.fragment(run_every=...)`; the worker never touches the UI.

A task started with `start_once(key, ...)` is also kept in this process under its key (e.g. the run folder it
works for), so a reloaded page (a new browser session) finds it again with `running(key)` and shows its progress
rather than losing it, and a second click, or a second tab on the same run, cannot start the same work twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

RUNNING, DONE, FAILED = "running", "done", "failed"


@dataclass(frozen=True)
class TaskSnapshot:
    """What a task is doing at one moment: status ("running", "done", "failed"), share done (0..1), a note on the
    current step, the error message of a failed task, its result, and the seconds it has run."""

    status: str
    share: float
    note: str
    error: str | None
    result: Any
    seconds: float


class BackgroundTask:
    """Run `work(progress, stop_event)` on a thread of its own and keep what a page polls.

    `progress(share, note)` may be called from the work at any time; an exception the work raises is kept as the
    task's error (with its type when the message is empty), never lost with the thread.
    """

    def __init__(self, work: Callable[[Callable[[float, str], None], threading.Event], Any], label: str) -> None:
        self.label = label
        self.stop_event = threading.Event()
        self._work = work
        self._lock = threading.Lock()
        self._status, self._share, self._note = RUNNING, 0.0, "Starting…"
        self._error: str | None = None
        self._result: Any = None
        self._started = time.monotonic()
        self._ended: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"task-{label}", daemon=True)

    def start(self) -> BackgroundTask:
        self._thread.start()
        return self

    def _progress(self, share: float, note: str) -> None:
        with self._lock:
            self._share, self._note = min(max(float(share), 0.0), 1.0), note

    def _run(self) -> None:
        try:
            result = self._work(self._progress, self.stop_event)
        except Exception as error:  # noqa: BLE001 - whatever the work raises must reach the page, not die here
            log.exception("Background task '%s' failed", self.label)
            with self._lock:
                # A KeyError's str() is its repr, quotes and all; its message is what a person should read.
                message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
                self._status, self._error = FAILED, str(message) or type(error).__name__
        else:
            with self._lock:
                self._status, self._share, self._result = DONE, 1.0, result
        finally:
            with self._lock:
                self._ended = time.monotonic()

    def snapshot(self) -> TaskSnapshot:
        with self._lock:
            seconds = (self._ended if self._ended is not None else time.monotonic()) - self._started
            return TaskSnapshot(self._status, self._share, self._note, self._error, self._result, seconds)

    @property
    def is_running(self) -> bool:
        return self.snapshot().status == RUNNING

    def stop(self) -> None:
        """Ask the work to stop at its next check (the from-scratch training stops after its current batch)."""
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


_TASKS: dict[str, BackgroundTask] = {}
_TASKS_LOCK = threading.Lock()


def start_once(key: str, work: Callable[[Callable[[float, str], None], threading.Event], Any],
               label: str) -> BackgroundTask:
    """The task running under `key`, or a new one started with `work` when none is running there."""
    with _TASKS_LOCK:
        task = _TASKS.get(key)
        if task is None or not task.is_running:
            task = _TASKS[key] = BackgroundTask(work, label).start()
        return task


def running(key: str) -> BackgroundTask | None:
    """The task still running under `key` (for a page that did not start it, e.g. after a reload), else None.

    A finished task is let go here: what it made is saved by its work, and the session that started it keeps
    its own reference for the outcome.
    """
    with _TASKS_LOCK:
        task = _TASKS.get(key)
        if task is not None and not task.is_running:
            del _TASKS[key]
            task = None
        return task


__all__ = ["DONE", "FAILED", "RUNNING", "BackgroundTask", "TaskSnapshot", "running", "start_once"]
