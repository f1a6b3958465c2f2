"""A job's log: its status and the engine's events as they arrive, behind one lock, and the snapshot a page draws.

`TrainingJob` (`core._jobs_job`) owns the worker, the queue slot and the stop and cancel flags; this log is its
other half, the one the engine writes into (through `JobListener`) and every page reads (`snapshot`). Split the way
STYLE.md describes a job: "a job object owns the worker, a stop event and a lock-protected metrics log".
"""

from __future__ import annotations

import threading
import time
from typing import Any

from core._jobs_snapshot import (
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    STOPPED,
    JobSnapshot,
    _as_dict,
    _is_cache_phase,
    _is_plain,
    _number,
    _whole,
)
from core.eta import TimeLeft

#: Step metrics kept per job for the live chart; older points are thinned, never the epoch metrics.
MAX_STEP_POINTS = 5000


class JobLog:
    """Status, phase, error, the engine's step and epoch metrics, progress and time left of one job.

    Every method takes the lock, so the supervising thread may write while pages read from theirs.

    Args:
        planned_epochs: the epochs the run's settings ask for (progress counts epochs against it; the time-left
            estimate starts from it until the engine says how many it plans).
    """

    def __init__(self, planned_epochs: Any) -> None:
        self.lock = threading.Lock()
        self.planned_epochs = _number(planned_epochs)
        self.status = QUEUED
        self.phase = "queued"
        self.error: str | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.steps: list[dict[str, Any]] = []
        self.epochs: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}
        self.progress = 0.0
        self.best_epoch: int | None = None
        self.time_left = TimeLeft(epochs=_whole(planned_epochs))

    # ------------------------------------------------------------------------------------------ the job's status
    def start_running(self, since: float | None = None) -> None:
        """The job leaves the queue: it is running from now on, or `since` then (an adopted worker's start); a job
        that ended while queued stays ended."""
        with self.lock:
            if self.status == QUEUED:
                self.status, self.phase = RUNNING, "starting"
                self.started_at = since or time.time()

    def resume_from(self, epochs: list[dict[str, Any]]) -> None:
        """A resumed run starts from the epochs its checkpoint kept, and the epoch they say is kept."""
        with self.lock:
            self.epochs = [dict(m) for m in epochs]
            kept = [m["best_epoch"] for m in self.epochs if m.get("best_epoch") is not None]
            self.best_epoch = int(kept[-1]) if kept else None  # every epoch record says which epoch is kept

    def end_as(self, status: str, error: str | None) -> None:
        with self.lock:
            self.status, self.phase, self.error = status, "done", error
            self.finished_at = time.time()

    def finish(self, result: Any, stop_requested: bool) -> str:
        """The engine's result decides how the job ended (a stop request turns an unfinished run into "stopped");
        returns that status."""
        summary = _as_dict(result)
        engine_status = str(summary.get("status") or "").lower()
        with self.lock:
            if engine_status == FAILED:
                self.status = FAILED
                self.error = str(summary.get("error") or "Training failed; see the server log.")
            elif engine_status == STOPPED or (stop_requested and engine_status != COMPLETED):
                self.status = STOPPED
            else:
                self.status = COMPLETED
                self.progress = 1.0
            best = summary.get("best_epoch")
            if best is not None:
                self.best_epoch = int(best)
            for key in ("cache_mode", "cache_note"):
                if summary.get(key) is not None and self.info.get(key) is None:
                    self.info[key] = summary[key]
            self.phase = "done"
            self.finished_at = time.time()
            return self.status

    # -------------------------------------------------------------------------------------- the engine's events
    def begin(self, event: Any) -> None:
        """`on_train_begin`: what the engine planned (a typed event or its wire dict, `core.contracts`)."""
        info = _as_dict(event)
        with self.lock:
            self.info.update({k: v for k, v in info.items() if _is_plain(v)})
            if self.phase == "starting":
                self.phase = "features" if info.get("cache_mode") in {"features", "activations"} else "training"
            self.time_left.begin(
                _whole(info.get("epochs")) or self.time_left.epochs, num_train=_whole(info.get("num_train")) or 0,
                num_val=_whole(info.get("num_val")) or 0, gradient=info.get("head", "gradient") != "logistic",
                now=time.monotonic(),
            )

    def step(self, event: Any) -> None:
        """`on_step_end`: a training step, or the feature pass's progress."""
        metrics, now = _as_dict(event), time.time()
        with self.lock:
            if _is_cache_phase(metrics):
                self.phase = "features"
            else:
                self.phase = "training"
                entry = {k: v for k, v in metrics.items() if _is_plain(v)}
                entry.setdefault("step", len(self.steps) + 1)
                if "train_loss" not in entry and "loss" in entry:
                    entry["train_loss"] = entry["loss"]
                entry["time"] = now - (self.started_at or now)
                self.steps.append(entry)
                if len(self.steps) > MAX_STEP_POINTS:
                    self.steps = self.steps[::2]
            self._update_progress(metrics)
            if _is_cache_phase(metrics):
                self.time_left.cache(float(self.info.get("cache_progress") or 0.0), time.monotonic())
            else:
                self.time_left.step(self.progress, time.monotonic())

    def epoch(self, event: Any) -> None:
        """`on_epoch_end`: an epoch's metrics and the epoch the engine keeps."""
        metrics = _as_dict(event)
        with self.lock:
            entry = {k: v for k, v in metrics.items() if _is_plain(v)}
            entry.setdefault("epoch", len(self.epochs) + 1)
            self.epochs.append(entry)
            if entry.get("best_epoch") is not None:  # the engine sends the epoch it keeps; never recomputed here
                self.best_epoch = int(entry["best_epoch"])
            self.phase = "training"
            if self.planned_epochs:
                self.progress = max(self.progress, min(1.0, float(entry["epoch"]) / self.planned_epochs))
            self._update_progress(metrics)
            self.time_left.epoch_end(time.monotonic(), epochs_done=_whole(entry.get("epoch")))

    def end(self, result: Any) -> None:
        """`on_train_end`: the run's result (only its kept epoch matters here; `finish` settles the status)."""
        summary = _as_dict(result)
        with self.lock:
            if summary.get("best_epoch") is not None:
                self.best_epoch = int(summary["best_epoch"])

    def _update_progress(self, metrics: dict[str, Any]) -> None:
        """Progress as the engine reports it: `progress`, else `step` of `total_steps`; never goes back."""
        progress = _number(metrics.get("progress"))
        if progress is None:
            step, total = _number(metrics.get("step")), _number(metrics.get("total_steps"))
            if step is not None and total:
                progress = step / total
        if progress is not None and not _is_cache_phase(metrics):
            self.progress = max(self.progress, min(1.0, progress))
        elif progress is not None:
            self.info["cache_progress"] = min(1.0, progress)

    # ------------------------------------------------------------------------------------------------ reading
    def seconds_left(self) -> float | None:
        """The run's estimated seconds left while it runs, else None; cheap (the queue asks it for every waiting
        page's expected start, without copying the step log)."""
        with self.lock:
            return self._seconds_left()

    def _seconds_left(self) -> float | None:
        if self.status != RUNNING:
            return None
        return self.time_left.seconds_left(time.monotonic())

    def snapshot(self, job_id: str, run_dir: str, queue_position: int | None, expected_start: float | None,
                 isolation: str) -> JobSnapshot:
        """A copy of everything a page draws, taken under the lock."""
        with self.lock:
            now = self.finished_at or time.time()
            return JobSnapshot(
                job_id=job_id,
                status=self.status,
                phase=self.phase,
                error=self.error,
                steps=[dict(m) for m in self.steps],
                epochs=[dict(m) for m in self.epochs],
                progress=self.progress,
                eta_seconds=self._seconds_left(),
                elapsed_seconds=now - self.started_at if self.started_at else 0.0,
                cache_mode=self.info.get("cache_mode"),
                cache_note=self.info.get("cache_note"),
                best_epoch=self.best_epoch,
                run_dir=run_dir,
                queue_position=queue_position,
                info=dict(self.info),
                expected_start_seconds=expected_start,
                isolation=isolation,
            )
